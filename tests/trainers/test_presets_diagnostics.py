"""Presets wire scheme + filters + loss end to end; diagnostics report what they claim."""

from __future__ import annotations

import math

import pytest
import torch

from trainers import diagnostics as D
from trainers.advantages import SCHEMES, FadeState, compute_advantages
from trainers.filters import FILTERS, FilterInputs, apply_filters
from trainers.logprobs import token_stats
from trainers.losses import LossConfig, LossNormalizer, policy_loss
from trainers.presets import PRESETS, Preset, get_preset

NAMES = [
    "grpo", "dapo", "gspo", "wapo", "stapo", "cw_grpo", "fade", "grpo_n", "gspo_n", "wapo_grpo_baseline",
    "wapo_dapo_baseline", "wapo_gspo_baseline",
]  # fmt: skip


def test_every_preset_is_registered_and_consistent() -> None:
    assert set(PRESETS.names()) == set(NAMES)
    for name in NAMES:
        preset = get_preset(name)
        assert preset.name == name
        assert preset.scheme in SCHEMES
        for spec in preset.filters:
            assert (spec if isinstance(spec, str) else spec["name"]) in FILTERS
        assert Preset.from_dict(preset.to_dict()) == preset
    assert get_preset("dapo").loss.aggregation == "token_mean"
    assert get_preset("gspo").loss.ratio == "sequence"
    assert get_preset("wapo").loss.ratio == "wapo" and get_preset("wapo").loss.aggregation == "fixed_length"
    assert get_preset("stapo").loss.aggregation == "renormalized_kept"


def test_get_preset_returns_fresh_copies_and_validates() -> None:
    a = get_preset("grpo", learning_rate=3e-6)
    a.loss.eps_low = 0.5
    assert get_preset("grpo").loss.eps_low == 0.2 and a.learning_rate == 3e-6
    with pytest.raises(TypeError, match="no field"):
        get_preset("grpo", lr=1.0)
    with pytest.raises(ValueError, match="unknown key 'bogus'"):
        Preset.from_dict({"name": "x", "scheme": "grpo", "bogus": 1})
    with pytest.raises(ValueError, match=r"unknown key 'loss.eps_hihg'; did you mean 'loss.eps_high'"):
        Preset.from_dict({"name": "x", "scheme": "grpo", "loss": {"eps_hihg": 0.3}})


@pytest.mark.parametrize("name", NAMES)
def test_preset_end_to_end_step(name: str) -> None:
    """Advantages -> chunked stats -> filters -> global normalizer -> loss -> finite, nonzero gradient."""
    gen = torch.Generator().manual_seed(0)
    preset = get_preset(name)
    b, t, h, v = 8, 6, 5, 17
    groups = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0])
    hidden = torch.randn(b, t, h, generator=gen, dtype=torch.float64)
    head = torch.randn(v, h, generator=gen, dtype=torch.float64).requires_grad_()
    targets = torch.randint(0, v, (b, t), generator=gen)
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[:, 0] = False
    stats = token_stats(hidden, head, targets, mask=mask)
    old = (stats.logprobs.detach() + 0.1 * torch.randn(b, t, generator=gen, dtype=torch.float64)) * mask
    params = dict(preset.scheme_params)
    if preset.scheme == "fade":
        params.update(state=FadeState(), entropy=D.sequence_entropy(old, mask))
    adv = compute_advantages(preset.scheme, rewards, groups, **params)
    inputs = FilterInputs(
        mask, adv, stats.logprobs.detach(), stats.entropy.detach(), stats.collision.detach(), groups
    )
    filt = apply_filters(inputs, preset.filters, renormalize=preset.renormalize)
    loss_cfg = preset.loss
    if loss_cfg.aggregation in ("fixed_length", "token_budget"):
        loss_cfg.max_length = t
    norm = LossNormalizer.build(
        loss_cfg.aggregation,
        filt.count_mask,
        groups,
        max_length=loss_cfg.max_length,
        advantages=adv,
        active_groups_only=loss_cfg.active_groups_only,
    )
    loss, info = policy_loss(
        loss_cfg,
        norm,
        stats.logprobs,
        old,
        adv,
        filt.keep,
        group_ids=groups,
        token_weights=filt.weights,
        ref_logp=old,
        entropy=stats.entropy,
    )
    (grad,) = torch.autograd.grad(loss, head)
    assert torch.isfinite(loss) and torch.isfinite(grad).all() and grad.abs().sum() > 0
    logged = D.ratio_stats(info, filt.keep)
    assert 0 <= logged["clip/high_fraction"] <= 1


def test_gradient_masses_match_grpo_closed_form() -> None:
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0])
    g = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    adv = compute_advantages("grpo", r, g, eps=0.0)
    m = D.gradient_masses(adv, r, g)
    want = math.sqrt(0.25 * 0.75)
    assert m["adv/m_S"] == pytest.approx(want) and m["adv/m_F"] == pytest.approx(want)


def test_reward_and_entropy_diagnostics() -> None:
    stats = D.reward_stats(torch.tensor([1.0, 1.0, 0.0, 1.0]), torch.tensor([0, 0, 1, 1]))
    assert stats["reward/zero_variance_groups"] == 0.5 and stats["reward/mean"] == 0.75
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    logp = torch.tensor([[-1.0, -3.0, -9.0], [-4.0, -9.0, -9.0]])
    assert D.sequence_entropy(logp, mask) == pytest.approx((2.0 + 4.0) / 2)
    assert D.entropy_stats(-logp, mask)["entropy/mean"] == pytest.approx(8 / 3)
    kl = D.approx_kl(logp, logp, mask)
    assert kl == {"kl/k1": 0.0, "kl/k3": 0.0}
    kl = D.approx_kl(logp, logp - 0.1, mask)
    assert kl["kl/k1"] == pytest.approx(-0.1) and kl["kl/k3"] > 0


def test_rank1_fraction() -> None:
    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(20, 6, generator=gen)
    u, v = torch.randn(20, 1, generator=gen), torch.randn(1, 6, generator=gen)
    assert D.rank1_fraction(w0, w0 + u @ v) == pytest.approx(1.0, abs=1e-6)
    eye = torch.zeros(20, 6)
    eye[:6] = torch.eye(6)
    assert D.rank1_fraction(w0, w0 + eye) == pytest.approx(1 / 6, abs=1e-6)
    assert D.rank1_fraction(w0, w0) == 0.0


def test_taxonomy_stapo_covariance_and_fade_diagnostics() -> None:
    p = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.6, 0.001]])
    coll = torch.full((2, 3), 0.4)
    mask = torch.ones(2, 3, dtype=torch.bool)
    inputs = FilterInputs(
        mask, torch.tensor([1.0, -1.0]), p.log(), torch.rand(2, 3), coll, torch.tensor([0, 0])
    )
    frac = D.taxonomy_fractions(inputs)
    assert frac == pytest.approx(
        {
            "taxonomy/pos_peak": 2 / 6,
            "taxonomy/pos_valley": 1 / 6,
            "taxonomy/neg_peak": 1 / 6,
            "taxonomy/neg_valley": 2 / 6,
        }
    )
    keep = mask.clone()
    keep[0, 1] = False
    assert D.stapo_masked_fraction(keep, mask)["stapo/masked_fraction"] == pytest.approx(1 / 6)
    cov = D.covariance_percentiles(inputs)
    assert cov["cov/pos_top0.01%"] >= cov["cov/pos_top50%"] >= 0
    assert cov["cov/neg_top0.01%"] <= cov["cov/neg_top50%"] <= 0
    state = FadeState()
    compute_advantages("fade", [1.0, 0.0], [0, 0], state=state, entropy=1.0)
    assert D.fade_stats(state) == {
        "fade/alpha": state.alpha,
        "fade/delta": 1.0,
        "fade/p_hat": state.p_hat,
        "fade/h_hat": 1.0,
    }


def test_loss_config_is_yaml_friendly() -> None:
    cfg = LossConfig(aggregation="token_mean")
    assert all(isinstance(v, (str, float, int, bool, type(None))) for v in vars(cfg).values())
