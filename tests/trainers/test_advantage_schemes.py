"""Edge cases and invariances every advantage scheme must honour."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from trainers.advantages import (
    RAW_REWARD_SCHEMES,
    SCHEMES,
    FadeState,
    compute_advantages,
    compute_fade,
    scheme_params,
)

TABLE_NAMES = {
    "grpo", "dr_grpo", "mean_centered", "rloo", "reinforce", "wapo", "wapo_success_norm", "psr", "nsr",
    "w_reinforce", "grpo_n", "gspo_n", "power_alpha", "asym_power_alpha", "asym_grpo", "fade", "maxrl",
    "passk_tang", "passk_chen", "passk_mix", "asym_rl", "quantile", "mc_grpo", "skew_r", "t2t",
}  # fmt: skip
ALL = SCHEMES.names()
SHIFT_INVARIANT = [
    "grpo", "dr_grpo", "mean_centered", "rloo", "skew_r", "grpo_n", "gspo_n", "wapo", "asym_grpo", "asym_rl",
    "quantile", "mc_grpo", "passk_tang",
]  # fmt: skip


def extra(scheme: str, n: int, lengths: torch.Tensor | None = None) -> dict[str, Any]:
    """Options a scheme requires: FADE's state and entropy, T2T's lengths."""
    if scheme == "fade":
        return {"state": FadeState(), "entropy": 1.5}
    if scheme == "t2t":
        return {"lengths": lengths if lengths is not None else torch.arange(1, n + 1) * 10}
    return {}


def mixed_batch(seed: int = 0, continuous: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    sizes = [1, 2, 3, 4, 5, 7, 8, 1, 6]
    gids = torch.cat([torch.full((s,), 11 * i - 40) for i, s in enumerate(sizes)])
    r = (torch.rand(gids.numel(), generator=gen) < 0.5).double()
    if continuous:
        r = torch.where(
            torch.rand(gids.numel(), generator=gen) < 0.3, torch.rand(gids.numel(), generator=gen), r
        )
    perm = torch.randperm(gids.numel(), generator=gen)
    return r[perm], gids[perm]


def test_registry_lists_every_table_scheme() -> None:
    assert set(ALL) >= TABLE_NAMES
    assert SCHEMES.get("mean_centered") is SCHEMES.get("dr_grpo")


@pytest.mark.parametrize("scheme", ALL)
@pytest.mark.parametrize("seed", [0, 1])
def test_permutation_invariance(scheme: str, seed: int) -> None:
    r, g = mixed_batch(seed)
    lengths = torch.randint(5, 50, (r.numel(),), generator=torch.Generator().manual_seed(seed))
    base = compute_advantages(scheme, r, g, **extra(scheme, r.numel(), lengths))
    perm = torch.randperm(r.numel(), generator=torch.Generator().manual_seed(seed + 100))
    shuffled = compute_advantages(scheme, r[perm], g[perm], **extra(scheme, r.numel(), lengths[perm]))
    torch.testing.assert_close(shuffled, base[perm], rtol=0, atol=1e-12)
    assert torch.isfinite(base).all()


@pytest.mark.parametrize("scheme", ALL)
def test_groups_of_one(scheme: str) -> None:
    r = torch.tensor([1.0, 0.0, 0.7, 1.0])
    g = torch.tensor([5, 9, -3, 12])
    adv = compute_advantages(scheme, r, g, **extra(scheme, 4))
    if scheme in RAW_REWARD_SCHEMES:
        raw = compute_advantages(scheme, r, torch.zeros(4, dtype=torch.long))
        torch.testing.assert_close(adv, raw)
    else:
        assert torch.equal(adv, torch.zeros(4, dtype=torch.float64))


@pytest.mark.parametrize("scheme", ALL)
@pytest.mark.parametrize("value", [0.0, 1.0, 0.1, 0.3])
def test_all_equal_rewards_give_zero_not_nan(scheme: str, value: float) -> None:
    r = torch.full((12,), value, dtype=torch.float32)
    g = torch.tensor([0, 1, 2] * 4)
    params = {"eps": 0.0} if "eps" in scheme_params(scheme) else {}
    adv = compute_advantages(scheme, r, g, **params, **extra(scheme, 12, torch.full((12,), 30)))
    assert torch.isfinite(adv).all()
    if scheme not in RAW_REWARD_SCHEMES:
        assert torch.equal(adv, torch.zeros(12, dtype=torch.float64))


@pytest.mark.parametrize("scheme", SHIFT_INVARIANT)
@pytest.mark.parametrize("G", [2, 4, 8, 16])
def test_huge_offset_is_shift_invariant(scheme: str, G: int) -> None:
    gen = torch.Generator().manual_seed(G)
    r = (torch.rand(4 * G, generator=gen) < 0.5).double()
    g = torch.arange(4).repeat_interleave(G)
    small = compute_advantages(scheme, r, g)
    big = compute_advantages(scheme, torch.tensor(1e4, dtype=torch.float32) + r.float(), g)
    torch.testing.assert_close(big, small, rtol=0, atol=1e-9)


@pytest.mark.parametrize("scheme", ALL)
@pytest.mark.parametrize("bad", [math.nan, None, math.inf])
def test_bad_reward_names_the_trajectory(scheme: str, bad: float | None) -> None:
    r: list[Any] = [1.0, 0.0, 1.0, 0.0, 0.5, bad, 1.0]
    g = [3, 3, 4, 4, 4, 77, 77]
    with pytest.raises(ValueError, match=r"trajectory 5 \(group id 77\)"):
        compute_advantages(scheme, r, g, **extra(scheme, 7))


def test_unknown_option_names_scheme_and_valid_options() -> None:
    with pytest.raises(TypeError, match=r"'grpo'.*\['alpha'\].*eps, std"):
        compute_advantages("grpo", [1, 0], [0, 0], alpha=2.0)
    with pytest.raises(KeyError, match="Did you mean 'grpo'"):
        compute_advantages("grp", [1, 0], [0, 0])


def test_mismatched_lengths_and_float_group_ids() -> None:
    with pytest.raises(ValueError, match="group_ids has 2"):
        compute_advantages("grpo", [1, 0, 1], [0, 0])
    adv = compute_advantages("dr_grpo", [1.0, 0.0], [2.0, 2.0])
    assert adv.tolist() == [0.5, -0.5]
    with pytest.raises(ValueError, match="integers"):
        compute_advantages("dr_grpo", [1.0, 0.0], [2.5, 2.0])


@pytest.mark.parametrize("scheme", ALL)
def test_continuous_and_negative_rewards_are_finite(scheme: str) -> None:
    gen = torch.Generator().manual_seed(3)
    r = torch.randn(40, generator=gen) * 3
    g = torch.randint(0, 6, (40,), generator=gen)
    adv = compute_advantages(scheme, r, g, **extra(scheme, 40))
    assert adv.shape == (40,)
    assert torch.isfinite(adv).all()


def test_rloo_and_grpo_values() -> None:
    r = torch.tensor([1.0, 0.0, 0.0, 0.5])
    g = torch.tensor([1, 1, 1, 1])
    torch.testing.assert_close(compute_advantages("rloo", r, g), 4 / 3 * (r - r.mean()).double())
    sigma = r.double().std(unbiased=False)
    torch.testing.assert_close(compute_advantages("grpo", r, g, eps=0.0), (r.double() - r.mean()) / sigma)
    sample = r.double().std(unbiased=True)
    got = compute_advantages("grpo", r, g, eps=0.0, std="sample")
    torch.testing.assert_close(got, (r.double() - r.mean()) / sample)
    with pytest.raises(ValueError, match="population"):
        compute_advantages("grpo", r, g, std="bessel")


def test_float32_variance_residue_does_not_blow_up() -> None:
    r = torch.tensor([0.1, 0.1, 0.1, 0.7, 0.7, 0.7], dtype=torch.float32)
    g = torch.tensor([0, 0, 0, 1, 1, 1])
    adv = compute_advantages("grpo", r, g, eps=1e-12)
    assert torch.equal(adv, torch.zeros(6, dtype=torch.float64))


def test_passk_tang_continuous_and_unique_max() -> None:
    r = torch.tensor([0.2, 0.9, 0.5, 0.9, 0.9, 0.1])
    g = torch.tensor([0, 0, 0, 1, 1, 1])
    adv = compute_advantages("passk_tang", r, g)
    torch.testing.assert_close(adv, torch.tensor([0.0, 0.4, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64))


def test_passk_chen_group_smaller_than_k_is_zero() -> None:
    adv = compute_advantages("passk_chen", [1.0, 0.0, 0.0], [0, 0, 0], k=4)
    assert torch.equal(adv, torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="k >= 1"):
        compute_advantages("passk_chen", [1.0, 0.0], [0, 0], k=0)


def test_mc_grpo_mad_scale_falls_back_for_binary() -> None:
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.2, 0.4, 0.9, 0.5])
    g = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    plain = compute_advantages("mc_grpo", r, g)
    mad = compute_advantages("mc_grpo", r, g, scale="mad")
    torch.testing.assert_close(mad[:4], plain[:4])
    # group 1: lower median 0.4, |r - med| = (0.2, 0, 0.5, 0.1) -> lower median 0.1
    torch.testing.assert_close(mad[4:], plain[4:] / 0.1)


def test_quantile_is_lower_quantile() -> None:
    r = torch.tensor([0.0, 1.0, 2.0, 3.0])
    g = torch.zeros(4, dtype=torch.long)
    assert compute_advantages("quantile", r, g, tau=0.5).tolist() == [-1.0, 0.0, 1.0, 2.0]
    assert compute_advantages("quantile", r, g, tau=0.0).tolist() == [0.0, 1.0, 2.0, 3.0]
    assert compute_advantages("quantile", r, g, tau=1.0).tolist() == [-3.0, -2.0, -1.0, 0.0]


def test_t2t_reshapes_then_normalizes() -> None:
    r = torch.tensor([1.0, 1.0, 0.0, 0.0])
    g = torch.zeros(4, dtype=torch.long)
    lengths = torch.tensor([10.0, 20.0, 20.0, 40.0])
    adv = compute_advantages("t2t", r, g, lengths=lengths, alpha=0.5, eps=0.0)
    p = 0.5
    norm = lengths / 40
    reshaped = torch.where(r > 0, 1 - 0.5 * p * norm, 0.5 * (1 - p) * norm).double()
    want = (reshaped - reshaped.mean()) / reshaped.std(unbiased=False)
    torch.testing.assert_close(adv, want)
    with pytest.raises(TypeError, match="lengths"):
        compute_advantages("t2t", r, g)


def test_t2t_all_wrong_group_still_ranks_by_length() -> None:
    """T2T reshapes before normalizing: equal raw rewards keep a length signal (FADE App. 8.2)."""
    adv = compute_advantages("t2t", [0.0, 0.0, 0.0], [1, 1, 1], lengths=[10, 20, 30])
    assert adv[0] < adv[1] < adv[2]


def test_fade_schedule_and_state_round_trip() -> None:
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0])
    g = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    state = FadeState()
    adv = compute_advantages("fade", r, g, state=state, entropy=2.0)
    assert state.step == 1 and state.h0 == 2.0 and state.h_star == 1.0
    assert state.p_hat == pytest.approx(0.02 * 0.5 + 0.98 * 0.5)
    assert state.alpha == pytest.approx(1.5) and state.delta == 1.0
    rbar = torch.tensor([0.25] * 4 + [0.75] * 4, dtype=torch.float64)
    want = (r.double() - rbar) * (1 - rbar) ** 0.5
    torch.testing.assert_close(adv, want)

    restored = FadeState.from_dict(state.to_dict())
    assert restored == state
    adv2 = compute_advantages("fade", r, g, state=restored, entropy=0.9)
    h_hat = 0.02 * 2.0 + 0.98 * 0.9
    assert restored.h_hat == pytest.approx(h_hat)
    assert restored.delta == pytest.approx(min(max(1 + h_hat - 1.0, 0.3), 1.0))
    centred = r.double() - rbar
    scaled = centred * (1 - rbar) ** (restored.alpha - 1)
    torch.testing.assert_close(adv2, torch.where(centred >= 0, scaled, scaled / restored.delta))
    assert restored.delta < 1.0

    with pytest.raises(TypeError, match="FadeState"):
        compute_advantages("fade", r, g)
    with pytest.raises(ValueError, match="unknown FadeState"):
        FadeState.from_dict({"p_hat": 0.5, "bogus": 1})


def test_compute_fade_is_functional() -> None:
    state = FadeState()
    adv, nxt = compute_fade([1.0, 0.0, 0.0], [0, 0, 0], state, 1.2)
    assert state == FadeState() and nxt.step == 1
    same = FadeState()
    torch.testing.assert_close(
        adv, compute_advantages("fade", [1.0, 0.0, 0.0], [0, 0, 0], state=same, entropy=1.2)
    )
    assert same == nxt


def test_fade_alpha_clips_at_alpha_max_for_hard_batches() -> None:
    state = FadeState()
    for _ in range(3):
        compute_advantages(
            "fade", [0.0, 0.0, 1.0, 0.0], [0, 0, 0, 0], state=state, entropy=1.0, alpha_max=3.0
        )
    assert state.alpha == 3.0
