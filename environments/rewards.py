"""Answer scores for question answering: exact match, sub-exact match and token F1.

Normalization follows the official HotpotQA evaluation script exactly: lowercase, drop ASCII punctuation,
drop the articles "a", "an", "the", collapse whitespace. F1 also keeps its special case: when either side
normalizes to "yes", "no" or "noanswer" and the two differ, F1 is 0 (a yes/no answer shares no partial
credit). Every scorer takes one prediction and one gold answer or a list of them and returns the best score
over the golds (0.0 for no golds).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence

from agentrl.core.registry import Registry

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_SPECIAL = ("yes", "no", "noanswer")

QAScorer = Callable[[str, "str | Sequence[str]"], float]
QA_SCORERS: Registry[QAScorer] = Registry("QA reward")


def normalize_answer(text: str) -> str:
    """The official HotpotQA / SQuAD answer normalization."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _golds(golds: str | Sequence[str]) -> list[str]:
    return [golds] if isinstance(golds, str) else [str(g) for g in golds]


def f1_precision_recall(prediction: str, gold: str) -> tuple[float, float, float]:
    """Token F1, precision and recall of one prediction against one gold answer (HotpotQA `f1_score`)."""
    pred, ref = normalize_answer(prediction), normalize_answer(gold)
    if (pred in _SPECIAL or ref in _SPECIAL) and pred != ref:
        return 0.0, 0.0, 0.0
    pred_tokens, ref_tokens = pred.split(), ref.split()
    same = sum((Counter(pred_tokens) & Counter(ref_tokens)).values())
    if same == 0:
        return 0.0, 0.0, 0.0
    precision = same / len(pred_tokens)
    recall = same / len(ref_tokens)
    return 2 * precision * recall / (precision + recall), precision, recall


@QA_SCORERS.register("em")
def qa_em(prediction: str, golds: str | Sequence[str]) -> float:
    """1.0 when the normalized prediction equals a normalized gold answer."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in _golds(golds)))


@QA_SCORERS.register("subem")
def qa_subem(prediction: str, golds: str | Sequence[str]) -> float:
    """1.0 when a normalized gold answer is a substring of the normalized prediction (Search-R1's sub-EM).

    As in Search-R1 the test is a plain substring test, so gold "1" is found in "1954"; an empty gold never
    matches.
    """
    pred = normalize_answer(prediction)
    return float(any((ref := normalize_answer(g)) and ref in pred for g in _golds(golds)))


@QA_SCORERS.register("f1")
def qa_f1(prediction: str, golds: str | Sequence[str]) -> float:
    """Best token F1 over the gold answers."""
    return max((f1_precision_recall(prediction, g)[0] for g in _golds(golds)), default=0.0)


def _contains_phrase(haystack: str, needle: str) -> bool:
    if not needle:
        return False
    return f" {needle} " in f" {haystack} "


def answer_in_text(text: str, golds: str | Sequence[str]) -> bool:
    """Whether some gold answer occurs as a whole-token phrase in `text` after normalization.

    Used for the per-turn `gold_in_observation` signal and by the oracle agent.
    """
    norm = normalize_answer(text)
    return any(_contains_phrase(norm, normalize_answer(g)) for g in _golds(golds))


def qa_reward(score: float, format_ok: bool, format_weight: float = 0.3) -> float:
    """WAPO's combined reward (format_weight * R_fmt + score) / (1 + format_weight)."""
    return (format_weight * float(format_ok) + score) / (1.0 + format_weight)
