"""Token filters: STAPO S2T, high-entropy top-ρ, the eight peak/valley masks, covariance Gaussian weights."""

from __future__ import annotations

import math

import pytest
import torch

from trainers.filters import (
    FILTERS,
    TAXONOMY,
    FilterInputs,
    apply_filters,
    cov_gaussian_weights,
    covariance_values,
    gaussian_weights,
    high_entropy_mask,
    masked_quantile,
    stapo_mask,
    taxonomy_masks,
)
from trainers.groups import GroupIndex
from trainers.logprobs import token_stats


def crafted() -> FilterInputs:
    """Two trajectories x 5 tokens; entropy values 0..9 so the top-20% threshold is known."""
    probs = torch.tensor([[0.001, 0.5, 0.001, 0.001, 0.9], [0.001, 0.001, 0.2, 0.001, 0.001]])
    entropy = torch.arange(10, dtype=torch.float64).reshape(2, 5)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 4] = False
    return FilterInputs(mask, torch.tensor([1.0, -1.0]), probs.log(), entropy, None, torch.tensor([0, 0]))


def test_stapo_drops_only_positive_low_prob_low_entropy_tokens() -> None:
    inputs = crafted()
    # valid entropies 0..8 (9 tokens): the 0.8 quantile is the ceil(7.2) = 8th smallest = 7
    assert masked_quantile(inputs.entropy, inputs.loss_mask, 0.8) == 7.0
    keep = stapo_mask(inputs, tau_p=2e-3, entropy_top_fraction=0.2)
    dropped = inputs.loss_mask & ~keep
    assert dropped.tolist() == [[True, False, True, True, False], [False] * 5]


def test_stapo_entropy_threshold_uses_minibatch_scope() -> None:
    inputs = crafted()
    keep = stapo_mask(inputs, tau_p=2e-3, entropy_top_fraction=0.5)
    # threshold = ceil(4.5) = 5th smallest = 4: token entropies 0, 2, 3 are < 4
    assert (inputs.loss_mask & ~keep)[0].tolist() == [True, False, True, True, False]
    keep_all = stapo_mask(inputs, tau_p=2e-3, entropy_top_fraction=1.0)
    assert (inputs.loss_mask & ~keep_all).sum() == 0


def test_high_entropy_keeps_top_fraction() -> None:
    inputs = crafted()
    keep = high_entropy_mask(inputs, top_fraction=0.2)
    assert keep.sum() == 2 and keep[1, 2] and keep[1, 3]


@pytest.mark.parametrize("n", [5, 9, 10, 11, 20])
def test_top_fraction_keeps_ceil_of_the_fraction(n: int) -> None:
    """Top 20% of 10 distinct entropies keeps 2 tokens (the boundary where a (1-ρ) lower quantile keeps 3)."""
    entropy = torch.randperm(n, generator=torch.Generator().manual_seed(n)).double()[None]
    mask = torch.ones_like(entropy, dtype=torch.bool)
    inputs = FilterInputs(mask, torch.tensor([1.0]), torch.zeros_like(entropy), entropy, None)
    expected = math.ceil(0.2 * n - 1e-9)
    assert int(high_entropy_mask(inputs, top_fraction=0.2).sum()) == expected
    probs_low = FilterInputs(mask, torch.tensor([1.0]), torch.full_like(entropy, -20.0), entropy, None)
    assert int(stapo_mask(probs_low, tau_p=2e-3, entropy_top_fraction=0.2).sum()) == expected


@pytest.mark.parametrize("seed", range(3))
def test_taxonomy_masks_partition_tokens(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(4, 6, 5, generator=gen, dtype=torch.float64) * 2
    weight = torch.randn(11, 5, generator=gen, dtype=torch.float64)
    targets = torch.randint(0, 11, (4, 6), generator=gen)
    stats = token_stats(hidden, weight, targets)
    mask = torch.rand(4, 6, generator=gen) < 0.8
    adv = torch.tensor([1.0, -0.5, 0.0, 2.0], dtype=torch.float64)
    inputs = FilterInputs(
        mask, adv, stats.logprobs.detach(), stats.entropy.detach(), stats.collision.detach()
    )
    m = taxonomy_masks(inputs)
    assert set(m) == set(TAXONOMY)
    assert torch.equal(m["pos"], m["pos_peak"] | m["pos_valley"])
    assert torch.equal(m["neg"], m["neg_peak"] | m["neg_valley"])
    assert torch.equal(m["peak"] | m["valley"], mask)
    assert not (m["peak"] & m["valley"]).any()
    assert not (m["pos"] & m["neg"]).any()
    assert not m["pos"][2].any() and not m["neg"][2].any()  # A = 0
    peak_ref = (stats.probs >= stats.collision) & mask
    assert torch.equal(m["peak"], peak_ref)
    assert torch.equal(m["pos_valley"], peak_ref.logical_not() & mask & (adv > 0)[:, None])
    for name in TAXONOMY:
        assert torch.equal(FILTERS.get(name)(inputs).keep, m[name])


def reference_cov_weights(inputs: FilterInputs) -> torch.Tensor:
    """Straightforward per-group loop of CW-GRPO sec. 2.3."""
    out = torch.zeros(inputs.loss_mask.shape, dtype=torch.float64)
    for g in inputs.group_ids.unique():
        rows = (inputs.group_ids == g).nonzero().squeeze(1)
        lp, adv, pos = [], [], []
        for i in rows.tolist():
            for t in range(inputs.loss_mask.shape[1]):
                if inputs.loss_mask[i, t]:
                    lp.append(float(inputs.logprobs[i, t]))
                    adv.append(float(inputs.advantages[i]))
                    pos.append((i, t))
        mean_lp, mean_a = sum(lp) / len(lp), sum(adv) / len(adv)
        c = [(x - mean_lp) * (a - mean_a) for x, a in zip(lp, adv, strict=True)]
        mean_c = sum(c) / len(c)
        var = sum((x - mean_c) ** 2 for x in c) / len(c)
        w = [math.exp(-x * x / (2 * var)) if var > 0 else 1.0 for x in c]
        scale = len(w) / sum(w)
        for (i, t), x in zip(pos, w, strict=True):
            out[i, t] = x * scale
    return out


def test_cov_gaussian_matches_reference_and_keeps_group_mass() -> None:
    gen = torch.Generator().manual_seed(7)
    mask = torch.rand(6, 8, generator=gen) < 0.7
    logp = torch.randn(6, 8, generator=gen, dtype=torch.float64) - 2
    logp[0, 0] = -15.0
    mask[0, 0] = True
    adv = torch.tensor([2.0, -1.0, 0.5, 1.0, -1.0, 0.0], dtype=torch.float64)
    groups = torch.tensor([3, 1, 3, 1, 3, 1])
    inputs = FilterInputs(mask, adv, logp, None, None, groups)
    w = cov_gaussian_weights(inputs)
    torch.testing.assert_close(w, reference_cov_weights(inputs))
    for g in (1, 3):
        rows = groups == g
        assert float(w[rows].sum()) == pytest.approx(float(mask[rows].sum()))
    c = covariance_values(inputs)
    extreme = c.abs().argmax()
    assert w.flatten()[extreme] == w[mask].min()
    assert torch.equal(w[~mask], torch.zeros(int((~mask).sum()), dtype=torch.float64))


def test_cov_gaussian_zero_spread_gives_unit_weights() -> None:
    mask = torch.ones(2, 3, dtype=torch.bool)
    inputs = FilterInputs(mask, torch.tensor([1.0, 1.0]), torch.zeros(2, 3), None, None, torch.tensor([0, 0]))
    assert torch.equal(cov_gaussian_weights(inputs), torch.ones(2, 3, dtype=torch.float64))


def _degenerate_inputs(case: str) -> FilterInputs:
    """Group 0 is degenerate in the way `case` names; group 1 is an ordinary group."""
    gen = torch.Generator().manual_seed(3)
    logp = -3 * torch.rand(5, 3, generator=gen, dtype=torch.float64)
    adv = torch.tensor([0.1, 0.1, 0.1, 0.7, -1.3], dtype=torch.float64)  # 9 x 0.1 / 9 != 0.1 in floats
    if case == "equal_logprobs":
        logp[:3] = -0.1
        adv[:3] = torch.tensor([0.7, -0.2, 1.1], dtype=torch.float64)
    elif case == "zero_advantages":
        adv[:3] = 0.0
    elif case == "equal_logprobs_and_advantages":
        logp[:3] = -0.1
    mask = torch.ones(5, 3, dtype=torch.bool)
    mask[4, 0] = False
    return FilterInputs(mask, adv, logp, None, None, torch.tensor([0, 0, 0, 1, 1]))


@pytest.mark.parametrize(
    "case", ["equal_advantages", "equal_logprobs", "zero_advantages", "equal_logprobs_and_advantages"]
)
def test_cov_gaussian_degenerate_group_gets_exactly_unit_weights(case: str) -> None:
    inputs = _degenerate_inputs(case)
    c = covariance_values(inputs)
    assert torch.equal(c[:3], torch.zeros(3, 3, dtype=torch.float64))
    w = cov_gaussian_weights(inputs)
    assert torch.equal(w[:3], inputs.loss_mask[:3].double())
    torch.testing.assert_close(w[3:], reference_cov_weights(inputs)[3:])


@pytest.mark.parametrize("value", [0.1, -1e-3, 1 / 3, 7.0])
def test_gaussian_weights_of_equal_nonzero_values_are_exactly_one(value: float) -> None:
    groups = GroupIndex.from_ids(torch.tensor([0, 0, 0, 1, 1, 1, 1, 2]))
    c = torch.tensor([value] * 3 + [value, value + 1.0, value - 0.5, value] + [value], dtype=torch.float64)
    w = gaussian_weights(c, groups)
    assert torch.equal(w[:3], torch.ones(3, dtype=torch.float64)) and w[7] == 1.0
    assert float(w[3:7].sum()) == pytest.approx(4.0) and bool((w[3:7] > 0).all())


def test_gaussian_weights_of_a_tight_group_far_from_zero_do_not_vanish() -> None:
    groups = GroupIndex.from_ids(torch.zeros(3, dtype=torch.long))
    w = gaussian_weights(torch.tensor([1e3, 1e3 + 1e-9, 1e3 + 2e-9], dtype=torch.float64), groups)
    assert float(w.sum()) == pytest.approx(3.0) and w[0] == w.max()


def test_apply_filters_composes_and_reports_scope() -> None:
    inputs = crafted()
    inputs.group_ids = torch.tensor([0, 1])
    res = apply_filters(inputs, [{"name": "stapo"}, "high_entropy"], renormalize=True)
    want = stapo_mask(inputs) & high_entropy_mask(inputs)
    assert torch.equal(res.keep, want)
    assert torch.equal(res.count_mask, res.keep)
    assert res.dropped_fraction == pytest.approx(1 - 2 / 9)
    no_renorm = apply_filters(inputs, ["stapo"], renormalize=False)
    assert torch.equal(no_renorm.count_mask, inputs.loss_mask)
    weighted = apply_filters(inputs, ["cov_gaussian", "stapo"])
    assert torch.equal(weighted.weights == 0, ~weighted.keep)
    none = apply_filters(inputs, None)
    assert torch.equal(none.keep, inputs.loss_mask) and none.dropped_fraction == 0
    with pytest.raises(ValueError, match="needs entropy"):
        apply_filters(FilterInputs(inputs.loss_mask, inputs.advantages, inputs.logprobs), ["stapo"])
    with pytest.raises(KeyError, match="token filter"):
        apply_filters(inputs, ["stap"])
