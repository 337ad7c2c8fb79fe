"""Questions shared between a training set and an evaluation set, matched by normalised question text.

Normalisation lower-cases, drops punctuation and articles and collapses whitespace (the SQuAD answer
normalisation applied to questions), so "Who wrote Hamlet?" and "who wrote  hamlet" are the same question.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from agentrl.core.types import Task


def normalize_question(text: str) -> str:
    from environments.rewards import normalize_answer

    return normalize_answer(text)


@dataclass
class Overlap:
    """An evaluation question also present in the training set: its position and id in each."""

    eval_index: int
    eval_id: str
    train_id: str
    question: str


def find_overlaps(train: Iterable[Task], evaluation: Iterable[Task]) -> list[Overlap]:
    """Every evaluation question whose normalised text is also a training question's, in evaluation order."""
    seen: dict[str, str] = {}
    for task in train:
        seen.setdefault(normalize_question(task.question), task.id)
    out = []
    for i, task in enumerate(evaluation):
        key = normalize_question(task.question)
        if key and key in seen:
            out.append(Overlap(i, task.id, seen[key], task.question))
    return out


def overlap_message(
    overlaps: list[Overlap], total: int, train_name: str, shown: int = 5, what: str = "evaluation questions"
) -> str:
    """`N of M evaluation questions also appear in NAME:` and the first `shown` of them."""
    lines = [f"#{o.eval_index} {o.eval_id!r} = {o.train_id!r}: {o.question[:80]}" for o in overlaps]
    lines = lines[:shown]
    listing = "\n  ".join(lines)
    more = f"\n  ... and {len(overlaps) - shown} more" if len(overlaps) > shown else ""
    return f"{len(overlaps)} of {total} {what} also appear in {train_name}:\n  {listing}{more}"
