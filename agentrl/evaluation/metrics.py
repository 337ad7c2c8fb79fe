"""The numbers of an evaluation report, computed from per-question records.

Every mean is over all sampled episodes (an episode the env never scored counts 0); with n samples for every
question that is also the mean over questions of the per-question means, which is what the bootstrap
resamples. `report_metrics` gives the nested report (`em`, `f1`, `format_rate`, `pass_at_k`, finish reasons,
breakdown by question group, bootstrap CIs); `flat_metrics` flattens it to the scalar names training logs
under `eval/` (`eval/em`, `eval/pass@4`, `eval/finish/answer`, `eval/em_ci_low`, ...).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from agentrl.evaluation.records import QuestionRecord, SampleRecord
from agentrl.metrics import pass_at_k

SCORE_NAMES = ("em", "f1", "accuracy", "score", "reward")
ALWAYS = ("em", "f1")
CI_STATS = ("em", "f1", "accuracy", "pass@1")
CI_LEVEL = 0.95


def default_ks(n: int) -> list[int]:
    """k = 1, 2, 4, ... up to n, and n itself."""
    ks = [1 << i for i in range(n.bit_length()) if 1 << i <= n]
    return ks if ks[-1] == n else [*ks, n]


def check_ks(ks: Sequence[int], n: int) -> list[int]:
    """The requested ks and 1 (pass@1 carries a CI), sorted; a ValueError naming the first k that n samples
    per question cannot give."""
    for k in ks:
        if k < 1:
            raise ValueError(f"pass@k needs k >= 1, got k={k}")
        if k > n:
            raise ValueError(
                f"pass@{k} needs at least {k} samples per question, but n = {n}; raise the samples per "
                f"question (--samples / eval.samples) to {k} or drop k={k}"
            )
    return sorted({1, *ks})


def samples_per_question(questions: Sequence[QuestionRecord]) -> int:
    counts = {len(q.samples) for q in questions}
    if len(counts) != 1 or 0 in counts:
        raise ValueError(f"every question needs the same number (>= 1) of samples, got {sorted(counts)}")
    return counts.pop()


def sample_score(sample: SampleRecord, name: str) -> float:
    """A sample's `name` score; 0 when the env did not score it (e.g. the episode ran out of tokens). Envs
    that score no text overlap (math: right or wrong; tool envs: their own score) have EM and F1 equal to
    that accuracy or score."""
    if name in ALWAYS and name not in sample.scores:
        for fallback in ("accuracy", "score"):
            if fallback in sample.scores:
                return sample.scores[fallback]
    return sample.scores.get(name, 0.0)


def reported_scores(questions: Sequence[QuestionRecord]) -> list[str]:
    """EM and F1 (always), then whichever of accuracy / score / reward some sample carries."""
    present = {k for q in questions for s in q.samples for k in s.scores}
    return [name for name in SCORE_NAMES if name in ALWAYS or name in present]


def per_question(questions: Sequence[QuestionRecord], name: str) -> np.ndarray:
    """[Q] per-question means of `name`: a score (`em`, `f1`, ...), `format_rate` or `pass@1`."""
    if name == "pass@1":
        return np.array([q.num_correct / len(q.samples) for q in questions], dtype=np.float64)
    key = "format_ok" if name == "format_rate" else name
    return np.array(
        [sum(sample_score(s, key) for s in q.samples) / len(q.samples) for q in questions], dtype=np.float64
    )


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values)) if values else 0.0


def summary(questions: Sequence[QuestionRecord], ks: Sequence[int]) -> dict[str, Any]:
    """Scores, format rate, avg@n, pass@k, searches, turns, response length, answer-in-retrieval rate and
    finish-reason fractions of `questions`."""
    n = samples_per_question(questions)
    samples = [s for q in questions for s in q.samples]
    out: dict[str, Any] = {"num_questions": len(questions), "n": n, "episodes": len(samples)}
    for name in reported_scores(questions):
        out[name] = _mean([sample_score(s, name) for s in samples])
    out["format_rate"] = _mean([s.scores.get("format_ok", 0.0) for s in samples])
    out[f"avg@{n}"] = _mean([float(s.correct) for s in samples])
    out["pass_at_k"] = {k: _mean([pass_at_k(n, q.num_correct, k) for q in questions]) for k in ks}
    out["searches"] = _mean([float(s.searches) for s in samples])
    out["turns"] = _mean([float(s.turns) for s in samples])
    out["response_tokens"] = _mean([float(s.response_tokens) for s in samples])
    retrieval = [s.gold_retrieved for s in samples if s.gold_retrieved is not None]
    if retrieval:
        out["answer_in_retrieval"] = _mean([float(r) for r in retrieval])
    reasons = Counter(s.finish_reason or "unknown" for s in samples)
    out["finish_reasons"] = {r: c / len(samples) for r, c in sorted(reasons.items())}
    return out


def breakdown(questions: Sequence[QuestionRecord], ks: Sequence[int]) -> dict[str, dict[str, Any]]:
    """`summary` per question group (type / level / hop), with `count` questions each; {} without groups."""
    groups: dict[str, list[QuestionRecord]] = {}
    for q in questions:
        if q.group is not None:
            groups.setdefault(q.group, []).append(q)
    out = {}
    for name in sorted(groups):
        part = summary(groups[name], ks)
        keep = {k: v for k, v in part.items() if k not in ("finish_reasons", "episodes", "n")}
        out[name] = {"count": len(groups[name]), **keep}
    return out


def bootstrap_ci(
    questions: Sequence[QuestionRecord], resamples: int = 1000, seed: int = 0, level: float = CI_LEVEL
) -> dict[str, dict[str, float]]:
    """Percentile bootstrap CIs over questions for EM, F1, accuracy (whichever the env reports) and pass@1.

    Questions are resampled with replacement `resamples` times with a generator seeded by `seed`, so a
    report's intervals are reproducible; {} when `resamples` is 0.
    """
    if resamples <= 0 or not questions:
        return {}
    scores = reported_scores(questions)
    names = [name for name in CI_STATS if name == "pass@1" or name in scores]
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(questions), size=(resamples, len(questions)))
    tail = (1.0 - level) / 2 * 100
    out = {}
    for name in names:
        means = per_question(questions, name)[picks].mean(axis=1)
        low, high = np.percentile(means, [tail, 100 - tail])
        out[name] = {"low": float(low), "high": float(high)}
    return out


def report_metrics(
    questions: Sequence[QuestionRecord], ks: Sequence[int] | None = None, resamples: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """The metrics part of a report: `summary` of all questions, `by_group` breakdown, `ci` and `ci_level`."""
    n = samples_per_question(questions)
    ks = check_ks(ks, n) if ks else default_ks(n)
    out = summary(questions, ks)
    out["by_group"] = breakdown(questions, ks)
    out["ci"] = bootstrap_ci(questions, resamples, seed)
    out["ci_level"] = CI_LEVEL
    out["bootstrap_resamples"] = resamples
    return out


def flat_metrics(report: dict[str, Any], prefix: str = "eval/") -> dict[str, float]:
    """The report's scalars under `prefix`: scores, `format_rate`, `avg@n`, `pass@k`, `searches`, `turns`,
    `response_tokens`, `answer_in_retrieval`, `finish/<reason>`, `<stat>_ci_low` / `_high`, `episodes` and
    `questions` (the breakdown stays in the report)."""
    out: dict[str, float] = {}
    skip = ("pass_at_k", "finish_reasons", "by_group", "ci", "ci_level", "bootstrap_resamples", "n")
    for key, value in report.items():
        if key in skip or not isinstance(value, int | float):
            continue
        out[prefix + ("questions" if key == "num_questions" else key)] = float(value)
    for k, value in report.get("pass_at_k", {}).items():
        out[f"{prefix}pass@{k}"] = float(value)
    for reason, value in report.get("finish_reasons", {}).items():
        out[f"{prefix}finish/{reason}"] = float(value)
    for stat, bounds in report.get("ci", {}).items():
        out[f"{prefix}{stat}_ci_low"] = bounds["low"]
        out[f"{prefix}{stat}_ci_high"] = bounds["high"]
    return out
