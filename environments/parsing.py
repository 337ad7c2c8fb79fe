"""Parsing one agent turn of the tag protocol: `<think> ... </think>` then one action tag.

Rules (shared by the search and tool environments):

- The action is the first opening action tag in the turn (`<search>`, `<answer>`, `<tool>`, ...) outside the
  reasoning. When a turn holds several actions, the first one is executed and the rest is ignored; the turn
  then fails the format check.
- Reasoning is quoted text: when a turn opens `<think>` before any action tag, everything up to the first
  `</think>` is skipped when looking for the action, and protocol tags quoted there (`<think> I will use the
  <answer> tag later </think>`) neither act nor break the format. Only a nested `<think>` does.
- An action tag without its closing tag, or whose body contains another protocol tag (nesting), makes the turn
  invalid. So does an empty body and a turn with no action tag at all.
- A turn is well-formed when it is exactly `<think> non-empty reasoning </think>` followed by one closed
  action with a non-empty body, with only whitespace around them. Format and validity are separate: a turn
  without `<think>` still runs its search but fails the format check.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

PROTOCOL_TAGS = ("think", "search", "answer", "information", "tool", "result")
_ANY_TAG = re.compile(r"</?(?:" + "|".join(PROTOCOL_TAGS) + r")>")
_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


@dataclass(frozen=True)
class TurnParse:
    """The parsed turn.

    Attributes:
        action: the action tag's name ("search", "answer", ...) or "invalid".
        content: the stripped body of the action (None when invalid).
        format_ok: whether the whole turn is well-formed.
        error: why the turn is invalid (None when it is valid).
        format_error: why the format check failed (None when it passed).
    """

    action: str
    content: str | None
    format_ok: bool
    error: str | None
    format_error: str | None

    def step_info(self) -> dict[str, Any]:
        """The per-step `info` entries every environment reports for a parsed turn (tool calls and the
        gold-in-observation signal start empty; the environment fills them in as it acts)."""
        return {
            "turn_format_ok": self.format_ok,
            "action_type": self.action,
            "tool_calls": 0,
            "gold_in_observation": None,
            "error": self.error,
            "format_error": self.format_error,
        }


def _invalid(error: str) -> TurnParse:
    return TurnParse("invalid", None, False, error, error)


def parse_turn(text: str, actions: Sequence[str] = ("search", "answer")) -> TurnParse:
    """Parse `text` into its first action and a format verdict (see the module docstring for the rules)."""
    opening = re.compile(r"<(" + "|".join(re.escape(a) for a in actions) + r")>")
    match = opening.search(text, _reasoning_end(text, opening))
    if match is None:
        names = " or ".join(f"<{a}>" for a in actions)
        return _invalid(f"no {names} tag")
    name = match.group(1)
    close = text.find(f"</{name}>", match.end())
    if close < 0:
        return _invalid(f"unclosed <{name}> tag")
    body = text[match.end() : close]
    if _ANY_TAG.search(body):
        return _invalid(f"nested tags inside <{name}>")
    content = body.strip()
    if not content:
        return _invalid(f"empty <{name}>")
    format_error = _format_error(text[: match.start()], text[close + len(name) + 3 :])
    return TurnParse(name, content, format_error is None, None, format_error)


def _reasoning_end(text: str, opening: re.Pattern[str]) -> int:
    """Where the search for the action starts: after the first `</think>` when `<think>` opens before any
    action tag, else 0."""
    think = text.find(_THINK_OPEN)
    if think < 0:
        return 0
    first_action = opening.search(text, 0, think)
    close = text.find(_THINK_CLOSE, think)
    if first_action is not None or close < 0:
        return 0
    return close + len(_THINK_CLOSE)


def _format_error(prefix: str, suffix: str) -> str | None:
    stripped = prefix.strip()
    if not (stripped.startswith(_THINK_OPEN) and stripped.endswith(_THINK_CLOSE)):
        return "expected <think>...</think> before the action"
    reasoning = stripped[len(_THINK_OPEN) : len(stripped) - len(_THINK_CLOSE)]
    if not reasoning.strip() or _THINK_OPEN in reasoning or _THINK_CLOSE in reasoning:
        return "empty or nested <think>"
    if suffix.strip():
        return "text after the action (only the first action of a turn is used)"
    return None


def clean_text(text: str, max_chars: int) -> tuple[str, bool]:
    """Drop control characters, collapse whitespace and cut to `max_chars`; also says whether it was cut."""
    text = " ".join(_CONTROL.sub(" ", text).split())
    if len(text) > max_chars:
        return text[:max_chars], True
    return text, False
