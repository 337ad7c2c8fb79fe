"""Parsing and checking answers of the single-turn math environment (WAPO appendix F.1).

A well-formed response is `<think> reasoning </think>` followed by `Answer: <answer>`. The answer is the text
after the last `Answer:`. Two comparison modes:

- `"exact"` (the paper's): the strings must be equal after `normalize_math_answer` (surrounding whitespace, a
  trailing period and runs of whitespace are the only things forgiven).
- `"math"` (opt-in equivalence): both sides are canonicalized first: `\\boxed{}`/`\\fbox{}`, `$...$`,
  `\\(...\\)`,
  `\\text{}`, `\\left`/`\\right`, spacing commands, degree and percent signs and a leading `x =` are stripped;
  thousands separators and trailing units ("12 cm", "5 dollars") are dropped; integers, decimals and fractions
  (`3/4`, `\\frac{3}{4}`, `\\dfrac34`) compare as exact rationals, so 3/4 = 0.75 and 1,000 = 1000.0.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

MATH_INSTRUCTION = (
    "Put your reasoning inside <think>...</think> tags, "
    "then write your final answer as: Answer: <your answer>."
)
EQUIVALENCE_MODES = ("exact", "math")

_FORMAT = re.compile(r"\s*<think>(?P<reasoning>.*?)</think>\s*Answer:(?P<answer>.*)", re.DOTALL)
_ANSWER = re.compile(r"Answer:", re.IGNORECASE)


@dataclass(frozen=True)
class MathParse:
    """What a math response contained: format validity, the extracted answer, and why the format failed."""

    format_ok: bool
    answer: str | None
    error: str | None


def parse_math_response(response: str) -> MathParse:
    """Split a response into format validity and final answer (extracted even when the format fails)."""
    answers = list(_ANSWER.finditer(response))
    answer = response[answers[-1].end() :].strip() if answers else None
    answer = answer or None
    match = _FORMAT.fullmatch(response)
    if match is None:
        if "<think>" not in response or "</think>" not in response:
            return MathParse(False, answer, "missing <think>...</think>")
        return MathParse(False, answer, "expected <think>...</think> then 'Answer: <answer>'")
    reasoning, final = match.group("reasoning"), match.group("answer").strip()
    if not reasoning.strip():
        return MathParse(False, answer, "empty reasoning")
    if "<think>" in reasoning or "<think>" in final or "</think>" in final:
        return MathParse(False, answer, "nested or repeated <think> tags")
    if not final:
        return MathParse(False, None, "empty answer")
    if "Answer:" in final:
        return MathParse(False, answer, "more than one 'Answer:'")
    return MathParse(True, final, None)


def normalize_math_answer(answer: str) -> str:
    """The paper's exact-match normalization: trim, drop one trailing period, collapse whitespace."""
    text = " ".join(answer.split())
    return text[:-1].rstrip() if text.endswith(".") else text


def _last_braced(text: str, command: str) -> str | None:
    start = text.rfind(command)
    if start < 0:
        return None
    i = start + len(command)
    while i < len(text) and text[i] == " ":
        i += 1
    if i >= len(text) or text[i] != "{":
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
    return None


_SPACING = re.compile(r"\\[,;:! ]|\\quad|\\qquad|\\displaystyle|\\left|\\right")
_TEXT_CMD = re.compile(r"\\(?:text|textbf|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")
_DEGREES = re.compile(r"\^\s*\{?\\circ\}?|°")
_ASSIGN = re.compile(r"^[a-zA-Z]\s*=\s*(?=\S)")
_THOUSANDS = re.compile(r"[-+]?\d{1,3}(,\d{3})+(\.\d+)?")
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)"
_FRAC = re.compile(rf"(?P<sign>-?)\\frac\s*\{{\s*(?P<num>{_NUMBER})\s*\}}\s*\{{\s*(?P<den>{_NUMBER})\s*\}}")
_FRAC_SHORT = re.compile(r"(?P<sign>-?)\\frac(?P<num>\d)(?P<den>\d)")
_PLAIN_FRAC = re.compile(rf"(?P<num>{_NUMBER})\s*/\s*(?P<den>{_NUMBER})")
_UNITS = re.compile(rf"(?P<num>{_NUMBER}(?:\s*/\s*{_NUMBER})?)\s*(?:[a-zA-Z]+\.?\s*)+(?:\^?\d)?")


def _strip_wrappers(answer: str) -> str:
    text = answer.strip()
    for command in ("\\boxed", "\\fbox"):
        inner = _last_braced(text, command)
        if inner is not None:
            text = inner
    text = text.strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if text.startswith(left) and text.endswith(right) and len(text) >= len(left) + len(right):
            text = text[len(left) : len(text) - len(right)].strip()
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    text = _SPACING.sub("", text)
    text = _TEXT_CMD.sub(r"\1", text)
    text = _DEGREES.sub("", text)
    text = text.replace("\\%", "").replace("%", "").replace("\\$", "").replace("$", "")
    text = _ASSIGN.sub("", text.strip())
    text = text.strip()
    return text[:-1].rstrip() if text.endswith(".") else text


def _to_fraction(text: str) -> Fraction | None:
    text = text.strip()
    if _THOUSANDS.fullmatch(text):
        text = text.replace(",", "")
    for pattern in (_FRAC, _FRAC_SHORT):
        m = pattern.fullmatch(text)
        if m:
            den = Fraction(m.group("den"))
            if den == 0:
                return None
            value = Fraction(m.group("num")) / den
            return -value if m.group("sign") else value
    m = _PLAIN_FRAC.fullmatch(text)
    if m:
        den = Fraction(m.group("den"))
        return Fraction(m.group("num")) / den if den != 0 else None
    try:
        return Fraction(text) if re.fullmatch(_NUMBER, text) else None
    except (ValueError, ZeroDivisionError):
        return None


def canonical_math_answer(answer: str) -> Fraction | str:
    """An exact rational when the answer is numeric (units and separators dropped), else a string."""
    text = _strip_wrappers(answer)
    value = _to_fraction(text)
    if value is None:
        m = _UNITS.fullmatch(text)
        if m:
            value = _to_fraction(m.group("num"))
    if value is not None:
        return value
    return re.sub(r"\s+", "", text)


def math_equal(prediction: str | None, gold: str, mode: str = "exact") -> bool:
    """Whether `prediction` answers `gold` under the given comparison mode ("exact" or "math")."""
    if prediction is None:
        return False
    if mode == "exact":
        return normalize_math_answer(prediction) == normalize_math_answer(gold)
    if mode != "math":
        raise ValueError(
            f"unknown math equivalence mode {mode!r}; valid modes: {', '.join(EQUIVALENCE_MODES)}"
        )
    if normalize_math_answer(prediction) == normalize_math_answer(gold):
        return True
    return canonical_math_answer(prediction) == canonical_math_answer(gold)
