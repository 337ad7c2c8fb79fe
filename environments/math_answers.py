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

Hedged answers never match in `"math"` mode: a unit is at most `MAX_UNIT_WORDS` words of letters, none of them
a connective, operator, qualifier or variable (`NOT_UNITS`), with no number after it, so `3 and 4`, `2 or 3`,
`5 sqrt 2`, `5 x` and `3 or more` stay strings; several `\\boxed{}` with different contents are not unwrapped.

Checking is linear in the length of the answer (no pattern here can backtrack more than a constant number of
times per character), and never raises: numbers longer than `MAX_NUMBER_CHARS` characters are compared as
text rather than converted (Python refuses int conversions of more than 4300 digits).
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
MAX_NUMBER_CHARS = 1000
MAX_UNIT_WORDS = 4
NOT_UNITS = frozenset(
    "and or nor not but to plus minus times over divided by sqrt root squared cubed pi e i x y z n k "
    "than more less fewer least most about approximately approx roughly around nearly almost maybe perhaps "
    "probably possibly either since because if so then also else otherwise is are equals".split()
)

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


_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
_SPACING = re.compile(r"\\[,;:! ]|\\quad|\\qquad|\\displaystyle|\\left|\\right")
_TEXT_CMD = re.compile(r"\\(?:text|textbf|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")
_DEGREES = re.compile(r"\^\s*\{?\\circ\}?|°")
_ASSIGN = re.compile(r"^[a-zA-Z]\s*=\s*(?=\S)")
_THOUSANDS = re.compile(r"[-+]?\d{1,3}(,\d{3})+(\.\d+)?")
_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)"
_FRAC = re.compile(rf"(?P<sign>-?)\\frac\s*\{{\s*(?P<num>{_NUMBER})\s*\}}\s*\{{\s*(?P<den>{_NUMBER})\s*\}}")
_FRAC_SHORT = re.compile(r"(?P<sign>-?)\\frac(?P<num>\d)(?P<den>\d)")
_PLAIN_FRAC = re.compile(rf"(?P<num>{_NUMBER})\s*/\s*(?P<den>{_NUMBER})")
_LEADING_NUMBER = re.compile(rf"{_NUMBER}(?:\s*/\s*{_NUMBER})?")
_UNIT_WORD = re.compile(r"(?P<name>[a-zA-Z]+)\.?(?:\^?\d)?")


def _closing_brace(text: str, open_at: int) -> int | None:
    """Index of the `}` matching the `{` at `open_at` (None when it is never closed)."""
    depth = 0
    for j in range(open_at, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return j
    return None


def _boxed_contents(text: str) -> list[str]:
    """Contents of the top-level `\\boxed{...}` / `\\fbox{...}` in `text`, left to right (one linear scan)."""
    contents: list[str] = []
    pos = 0
    while (m := _BOX.search(text, pos)) is not None:
        close = _closing_brace(text, m.end() - 1)
        if close is None:
            break
        contents.append(text[m.end() : close])
        pos = close + 1
    return contents


def _unbox(text: str, levels: int = 3) -> str:
    """The content of the boxed answer, unwrapping nested boxes up to `levels` deep; text with several boxes
    holding different answers (a hedge) is returned unchanged."""
    for _ in range(levels):
        boxes = _boxed_contents(text)
        if not boxes or len({"".join(b.split()) for b in boxes}) > 1:
            return text
        text = boxes[-1].strip()
    return text


def _strip_wrappers(answer: str) -> str:
    text = _unbox(answer.strip())
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
    if len(text) > MAX_NUMBER_CHARS:
        return None
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
    return Fraction(text) if re.fullmatch(_NUMBER, text) else None


def _number_before_unit(text: str) -> str | None:
    """The number of `<number> <unit>` ("12 cm", "3/4 cup", "5 sq. ft"), else None.

    The unit is 1 to `MAX_UNIT_WORDS` whitespace-separated words of letters (optionally with a period and an
    exponent digit, as in `cm^2`); a word in `NOT_UNITS` or anything else after the number makes it None.
    """
    m = _LEADING_NUMBER.match(text)
    if m is None:
        return None
    words = text[m.end() :].split()
    if not 1 <= len(words) <= MAX_UNIT_WORDS:
        return None
    for word in words:
        unit = _UNIT_WORD.fullmatch(word)
        if unit is None or unit.group("name").lower() in NOT_UNITS:
            return None
    return m.group(0)


def canonical_math_answer(answer: str) -> Fraction | str:
    """An exact rational when the answer is numeric (units and separators dropped), else a string."""
    text = _strip_wrappers(answer)
    value = _to_fraction(text)
    if value is None and (number := _number_before_unit(text)) is not None:
        value = _to_fraction(number)
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
