"""Paired comparison of two evaluations of the same questions (the policy RL started from vs the one it
ended with): the mean difference, its bootstrap interval, and a one-sided sign-flip test.

For per-question scores a_i (before) and b_i (after) with d_i = b_i - a_i:

* the difference is mean(d);
* the interval is the percentile bootstrap of mean(d) over questions resampled with replacement;
* the one-sided p is the share of random sign flips s_i ∈ {±1} with mean(s·d) >= mean(d) (with the observed
  value counted once), the exact permutation test of "after is no better" when `flips` covers every pattern,
  and McNemar's exact test for 0/1 scores in the limit of many flips.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

CI_LEVEL = 0.95


@dataclass
class PairedDifference:
    """One score's paired comparison over `n` questions."""

    name: str
    n: int
    before: float
    after: float
    difference: float
    ci_low: float
    ci_high: float
    p_one_sided: float

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def paired_difference(
    name: str,
    before: Sequence[float] | np.ndarray,
    after: Sequence[float] | np.ndarray,
    resamples: int = 10000,
    seed: int = 0,
    level: float = CI_LEVEL,
) -> PairedDifference:
    """Compare per-question scores `before` and `after` (the same questions, in the same order).

    Raises:
        ValueError: the two lists differ in length, are empty, or hold a NaN.
    """
    a, b = np.asarray(before, dtype=np.float64), np.asarray(after, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"{name}: paired scores need two equal, non-empty lists (got {a.size} and {b.size})")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError(f"{name}: paired scores must be finite")
    d = b - a
    observed = float(d.mean())
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, d.size, size=(resamples, d.size))
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(d[picks].mean(axis=1), [tail, 100 - tail])
    signs = rng.choice(np.array([-1.0, 1.0]), size=(resamples, d.size))
    flipped = (signs * d).mean(axis=1)
    p = (1 + int((flipped >= observed - 1e-12).sum())) / (resamples + 1)
    return PairedDifference(name, int(d.size), float(a.mean()), float(b.mean()), observed, float(low),
                            float(high), float(p))  # fmt: skip
