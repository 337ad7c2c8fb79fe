"""pass@k against brute-force enumeration, and the report metrics computed from per-question records."""

from __future__ import annotations

import itertools
import math
import random
from fractions import Fraction

import pytest

from agentrl.evaluation.metrics import bootstrap_ci, check_ks, default_ks, flat_metrics, report_metrics
from agentrl.evaluation.records import QuestionRecord, SampleRecord
from agentrl.metrics import pass_at_k


def brute_force_pass_at_k(correct: list[bool], k: int) -> float:
    """The fraction of k-subsets of the samples that hold a correct one."""
    subsets = list(itertools.combinations(range(len(correct)), k))
    return sum(any(correct[i] for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_equals_brute_force_on_random_correctness_tables() -> None:
    rng = random.Random(0)
    for _ in range(60):
        n = rng.randint(1, 9)
        table = [[rng.random() < rng.random() for _ in range(n)] for _ in range(rng.randint(1, 6))]
        for k in range(1, n + 1):
            ours = sum(pass_at_k(n, sum(row), k) for row in table) / len(table)
            brute = sum(brute_force_pass_at_k(row, k) for row in table) / len(table)
            assert ours == pytest.approx(brute, abs=1e-12), (table, k)


def test_pass_at_k_is_stable_for_large_n() -> None:
    for n, c, k in [(1000, 3, 500), (5000, 1, 1), (2000, 1990, 7), (400, 17, 200)]:
        exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
        assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12, abs=1e-15)
    assert pass_at_k(10, 0, 5) == 0.0 and pass_at_k(10, 6, 5) == 1.0


@pytest.mark.parametrize("n,c,k", [(0, 0, 1), (4, 5, 1), (4, 2, 0), (4, 2, 5), (4, -1, 1)])
def test_pass_at_k_rejects_impossible_arguments(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError, match="pass@"):
        pass_at_k(n, c, k)


def test_requested_k_above_n_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"pass@8 needs at least 8 samples per question, but n = 4"):
        check_ks([1, 8], 4)
    assert check_ks([4, 2], 4) == [1, 2, 4]
    assert default_ks(1) == [1] and default_ks(6) == [1, 2, 4, 6] and default_ks(8) == [1, 2, 4, 8]


def sample(em: float, f1: float, searches: int = 1, retrieved: bool | None = True, finish: str = "answer"):
    scores = {"reward": f1, "format_ok": 1.0 if finish == "answer" else 0.0, "em": em, "f1": f1}
    return SampleRecord(
        answer="a", correct=em >= 1.0, scores=scores, searches=searches, turns=searches + 1,
        response_tokens=10 * (searches + 1), gold_retrieved=retrieved, finish_reason=finish,
    )  # fmt: skip


def records() -> list[QuestionRecord]:
    return [
        QuestionRecord(0, "q0", "Q0?", ["x"], "bridge", [sample(1, 1), sample(0, 0.5, 2, False)]),
        QuestionRecord(1, "q1", "Q1?", ["y"], "bridge", [sample(0, 0, 0, None, "max_turns"), sample(0, 0.2)]),
        QuestionRecord(2, "q2", "Q2?", ["z"], "comparison", [sample(1, 1), sample(1, 1, 3)]),
    ]


def test_report_metrics_from_records() -> None:
    report = report_metrics(records(), resamples=200, seed=3)
    assert report["num_questions"] == 3 and report["n"] == 2 and report["episodes"] == 6
    assert report["em"] == pytest.approx(3 / 6) and report["f1"] == pytest.approx(3.7 / 6)
    assert report["format_rate"] == pytest.approx(5 / 6) and report["avg@2"] == pytest.approx(3 / 6)
    assert report["pass_at_k"] == {1: pytest.approx(0.5), 2: pytest.approx(2 / 3)}
    assert report["searches"] == pytest.approx(8 / 6) and report["turns"] == pytest.approx(14 / 6)
    assert report["answer_in_retrieval"] == pytest.approx(4 / 5)  # the None sample does not count
    assert report["finish_reasons"] == {"answer": pytest.approx(5 / 6), "max_turns": pytest.approx(1 / 6)}
    assert report["by_group"]["bridge"]["count"] == 2 and report["by_group"]["comparison"]["count"] == 1
    assert report["by_group"]["comparison"]["em"] == 1.0
    for name in ("em", "f1", "pass@1"):
        low, high = report["ci"][name]["low"], report["ci"][name]["high"]
        assert 0.0 <= low <= high <= 1.0
    assert report["ci"]["em"]["low"] <= report["em"] <= report["ci"]["em"]["high"]
    flat = flat_metrics(report)
    assert flat["eval/em"] == report["em"] and flat["eval/pass@2"] == pytest.approx(2 / 3)
    assert flat["eval/finish/max_turns"] == pytest.approx(1 / 6) and "eval/em_ci_low" in flat


def test_bootstrap_is_seeded() -> None:
    assert bootstrap_ci(records(), 300, seed=1) == bootstrap_ci(records(), 300, seed=1)
    assert bootstrap_ci(records(), 0) == {}


def test_math_answers_report_em_and_f1_as_accuracy() -> None:
    scores = [{"reward": 1.0, "format_ok": 1.0, "accuracy": 1.0}, {"reward": 0.0, "format_ok": 1.0}]
    samples = [
        SampleRecord("4", s.get("accuracy", 0) == 1.0, s, 0, 1, 5, None, "answer") for s in scores
    ]  # fmt: skip
    report = report_metrics([QuestionRecord(0, "m", "2+2?", ["4"], "level 1", samples)], resamples=10)
    assert report["accuracy"] == report["em"] == report["f1"] == 0.5
    assert "answer_in_retrieval" not in report and report["by_group"]["level 1"]["count"] == 1


def test_record_round_trip() -> None:
    record = records()[0]
    assert QuestionRecord.from_dict(record.to_dict()) == record
    assert record.to_dict()["samples"][1]["score"] == 0.5
