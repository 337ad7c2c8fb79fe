"""Per-step diagnostics: plain functions returning `dict[str, float]` ready for a logger.

Shapes follow `trainers.losses`: masks and per-token values are [B, T], rewards and advantages [B].
"""

from __future__ import annotations

import math
from typing import Any

import torch

from trainers.filters import FilterInputs, covariance_values, taxonomy_masks
from trainers.groups import GroupIndex

Tensor = torch.Tensor


def _masked_mean(x: Tensor, mask: Tensor) -> float:
    m = mask.bool()
    n = int(m.sum())
    return float(x.detach()[m].double().mean()) if n else 0.0


def reward_stats(rewards: Tensor, group_ids: Tensor) -> dict[str, float]:
    """Reward mean/std over the batch and the fraction of zero-variance groups (no learning signal)."""
    r = torch.as_tensor(rewards, dtype=torch.float64)
    gi = GroupIndex.from_ids(torch.as_tensor(group_ids))
    return {
        "reward/mean": float(r.mean()),
        "reward/std": float(r.std(unbiased=False)),
        "reward/zero_variance_groups": float(gi.constant(r).double().mean()),
    }


def gradient_masses(
    advantages: Tensor, rewards: Tensor, group_ids: Tensor, threshold: float = 0.5
) -> dict[str, float]:
    """FADE eq. 3 masses averaged over groups: m_S = (1/G)Σ_{i∈S} A_i, m_F = -(1/G)Σ_{i∈F} A_i.

    S is the set of successes (r >= threshold) of each group.
    """
    a = torch.as_tensor(advantages, dtype=torch.float64)
    s = (torch.as_tensor(rewards, dtype=torch.float64) >= threshold).double()
    gi = GroupIndex.from_ids(torch.as_tensor(group_ids))
    m_s = gi.sum(a * s) / gi.size
    m_f = -gi.sum(a * (1 - s)) / gi.size
    return {"adv/m_S": float(m_s.mean()), "adv/m_F": float(m_f.mean())}


def ratio_stats(info: dict[str, Tensor], loss_mask: Tensor) -> dict[str, float]:
    """Clip fractions (low/high/dual) and ratio mean/min/max over loss tokens, from a loss function's info."""
    m = loss_mask.bool()
    ratio = info["ratio"][m].double()
    out = {
        "ratio/mean": float(ratio.mean()) if ratio.numel() else 1.0,
        "ratio/min": float(ratio.min()) if ratio.numel() else 1.0,
        "ratio/max": float(ratio.max()) if ratio.numel() else 1.0,
        "clip/low_fraction": _masked_mean(info["clipped_low"].double(), m),
        "clip/high_fraction": _masked_mean(info["clipped_high"].double(), m),
    }
    if "dual_clipped" in info:
        out["clip/dual_fraction"] = _masked_mean(info["dual_clipped"].double(), m)
    return out


def approx_kl(logp: Tensor, old_logp: Tensor, loss_mask: Tensor) -> dict[str, float]:
    """KL(π_old ‖ π) estimates over loss tokens: k1 = mean(log π_old - log π), k3 = mean(ρ - 1 - log ρ)."""
    log_ratio = (logp.detach() - old_logp.detach()).double().clamp(-20, 20)
    return {
        "kl/k1": _masked_mean(-log_ratio, loss_mask),
        "kl/k3": _masked_mean(log_ratio.exp() - 1 - log_ratio, loss_mask),
    }


def entropy_stats(entropy: Tensor, loss_mask: Tensor) -> dict[str, float]:
    """Mean token entropy over loss tokens."""
    return {"entropy/mean": _masked_mean(entropy, loss_mask)}


def sampled_entropy(logprobs: list[list[float]], loss_masks: list[list[int]]) -> dict[str, float]:
    """Entropy estimate over every sampled agent token: the mean of -log π(y_t) under the sampler, one list
    per episode (E[-log π(y)] = H(π) for y ~ π)."""
    total, count = 0.0, 0
    for lps, mask in zip(logprobs, loss_masks, strict=True):
        for lp, m in zip(lps, mask, strict=True):
            if m and math.isfinite(lp):
                total -= lp
                count += 1
    return {"entropy/mean": total / count if count else 0.0, "entropy/sampled_tokens": float(count)}


def sequence_entropy(logp: Tensor, loss_mask: Tensor) -> float:
    """FADE's H_t: batch mean of each sequence's mean -log π over its loss tokens."""
    m = loss_mask.double()
    per_seq = (-logp.detach().double() * m).sum(-1) / m.sum(-1).clamp_min(1)
    has = m.sum(-1) > 0
    return float(per_seq[has].mean()) if bool(has.any()) else 0.0


def taxonomy_fractions(inputs: FilterInputs) -> dict[str, float]:
    """Fractions of loss tokens in each of the four pos/neg × peak/valley cells (WAPO eq. 2)."""
    masks = taxonomy_masks(inputs)
    total = max(float(inputs.loss_mask.bool().sum()), 1.0)
    return {
        f"taxonomy/{k}": float(masks[k].sum()) / total
        for k in ("pos_peak", "pos_valley", "neg_peak", "neg_valley")
    }


def stapo_masked_fraction(keep: Tensor, loss_mask: Tensor) -> dict[str, float]:
    """Fraction of loss tokens STAPO's S2T mask silenced (the paper reports about 1e-4)."""
    total = float(loss_mask.bool().sum())
    dropped = float((loss_mask.bool() & ~keep.bool()).sum())
    return {"stapo/masked_fraction": dropped / total if total else 0.0}


def covariance_percentiles(
    inputs: FilterInputs, percentiles: tuple[float, ...] = (0.0001, 0.01, 0.2, 0.5)
) -> dict[str, float]:
    """Top-percentile magnitudes of positive and negative token covariances (CW-GRPO Table 1 style)."""
    c = covariance_values(inputs)[inputs.loss_mask.bool()]
    out: dict[str, float] = {}
    for sign, vals in (("pos", c[c > 0]), ("neg", -c[c < 0])):
        srt = torch.sort(vals, descending=True).values
        for p in percentiles:
            key = f"cov/{sign}_top{p * 100:g}%"
            if srt.numel() == 0:
                out[key] = 0.0
                continue
            idx = min(int(p * srt.numel()), srt.numel() - 1)
            out[key] = float(srt[idx]) if sign == "pos" else -float(srt[idx])
    return out


def fade_stats(state: Any) -> dict[str, float]:
    """FADE scheduler values α, δ, p̂, Ĥ (from a `FadeState`)."""
    return {
        "fade/alpha": float(state.alpha),
        "fade/delta": float(state.delta),
        "fade/p_hat": float(state.p_hat),
        "fade/h_hat": float(state.h_hat if state.h_hat is not None else float("nan")),
    }


def rank1_fraction(weight_before: Tensor, weight_after: Tensor) -> float:
    """σ₁²/‖ΔW‖²_F of an output-head weight change ΔW = after - before (FADE sec. 4.2); 0 for ΔW = 0."""
    delta = (weight_after.detach() - weight_before.detach()).double()
    fro2 = float((delta * delta).sum())
    if fro2 == 0.0:
        return 0.0
    sigma1 = float(torch.linalg.matrix_norm(delta, ord=2))
    return sigma1 * sigma1 / fro2
