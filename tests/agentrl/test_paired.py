"""The paired before/after comparison: mean difference, bootstrap interval, one-sided sign-flip p."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agentrl.evaluation.paired import paired_difference


def mcnemar_one_sided(improved: int, worsened: int) -> float:
    n = improved + worsened
    return sum(math.comb(n, k) for k in range(improved, n + 1)) / 2**n


def test_binary_scores_match_mcnemars_exact_test() -> None:
    before = np.array([0] * 8 + [1] * 2 + [1] * 20 + [0] * 20, dtype=float)
    after = np.array([1] * 8 + [0] * 2 + [1] * 20 + [0] * 20, dtype=float)
    result = paired_difference("em", before, after, resamples=40000, seed=1)
    assert result.n == 50 and result.difference == pytest.approx(6 / 50)
    assert result.before == pytest.approx(22 / 50) and result.after == pytest.approx(28 / 50)
    assert result.p_one_sided == pytest.approx(mcnemar_one_sided(8, 2), abs=0.006)  # 0.0547
    assert result.ci_low < result.difference < result.ci_high


def test_clear_gain_has_small_p_and_no_change_has_p_one() -> None:
    before = np.zeros(200)
    after = np.r_[np.ones(30), np.zeros(170)]
    assert paired_difference("em", before, after).p_one_sided < 1e-3
    same = paired_difference("f1", after, after)
    assert same.difference == 0 and same.p_one_sided == 1.0 and same.ci_low == same.ci_high == 0


def test_mismatched_or_empty_scores_are_refused() -> None:
    with pytest.raises(ValueError, match="em: paired scores need two equal"):
        paired_difference("em", [1.0, 0.0], [1.0])
    with pytest.raises(ValueError, match="must be finite"):
        paired_difference("em", [1.0, math.nan], [1.0, 0.0])
