"""Sequence-level advantage schemes over a flat batch with a group index.

Call `compute_advantages(scheme, rewards, group_ids, **params)`; list the schemes with `SCHEMES.names()`.
Every scheme maps rewards r [N] and group ids [N] (any integers, groups of any size, in any order) to one
advantage per trajectory [N] (float64). Group statistics are float64 and vectorized (see `trainers.groups`).

Conventions shared by every scheme (the specification is docs/algorithms.md; formulas cite the papers):

* r̄ is the group mean, σ the group standard deviation (`std="population"` by default, `"sample"` for Bessel's
  correction), p the group success rate, q = 1 - p.
* Degenerate groups: a group of one, or a group whose rewards are all equal (σ = 0), carries no relative
  signal, so every group-relative scheme gives it advantage exactly 0 (no NaN, no 1/eps blow-up). Equality is
  tested exactly (max == min), so float residue in a variance never turns into a ±1/eps advantage. The
  exceptions are the schemes defined on the raw reward (`reinforce`, `psr`, `nsr`, `w_reinforce`), which have
  no baseline and give every trajectory its own value whatever its group looks like.
* NaN, infinite or missing (None) rewards raise ValueError naming the trajectory index and its group id.
* Continuous rewards are accepted everywhere. Schemes defined on success/failure (`psr`, `nsr`, `w_reinforce`,
  `passk_chen`, `passk_mix`, `t2t`) read a trajectory as a success when r >= `threshold` (default 0.5).
* Schemes of the form f(r̄)·(r - r̄) with powers of (1 - r̄) or r̄ assume rewards in [0, 1]; the bases are
  clamped to [0, 1] so out-of-range rewards cannot produce NaN.

Notes where the papers are followed over the one-line scheme table of docs/algorithms.md:

* `passk_tang`: FADE App. 8.4.1 states the mass as the unnormalized sum Σ_{i∈S} A_i over a group of k = G
  samples, E = k·p·q^(k-1); with the table's 1/G normalization this is p·q^(k-1). The leave-one-out maximum is
  taken over the whole group, so k is the group size.
* `quantile` / `mc_grpo`: Q_τ is the lower τ-quantile (inverse empirical CDF). For binary rewards this gives
  Q_τ = 1[q < τ], which equals the paper's step function 1[p > τ] at the median (τ = 1/2, MC-GRPO) used
  there. MC-GRPO is r - med(r) as in FADE App. 8.6; MAD scaling is opt-in (`scale="mad"`) and falls back to
  scale 1 when MAD <= `mad_floor` (MAD is 0 for every binary group).
* `fade`: the advantage uses the group mean r̄ (as every other scheme), while the p̂ EMA reads the batch mean
  reward (Algorithm 2, line 4: r̄ over the whole batch B) and Ĥ the batch entropy H_t.
* `wapo_success_norm`: the normalizer G·r̄ of WAPO App. D is folded into the advantage, A⁺/r̄, so the loss can
  keep the `fixed_length` G·T_max normalizer of `wapo`.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from agentrl.core.registry import Registry
from trainers.groups import GroupIndex

Tensor = torch.Tensor
Scheme = Callable[..., Tensor]

SCHEMES: Registry[Scheme] = Registry("advantage scheme")

RAW_REWARD_SCHEMES = frozenset({"reinforce", "psr", "nsr", "w_reinforce"})

BATCH_INPUTS = {
    "lengths": "[N] agent tokens of each trajectory",
    "entropy": "H_t, the batch mean of per-trajectory mean -log π over sampled tokens",
    "state": "the run's scheme state (a `FadeState`), advanced in place once per batch",
}
_SCHEME_INPUTS: dict[Scheme, tuple[str, ...]] = {}


def reads(*inputs: str) -> Callable[[Scheme], Scheme]:
    """Declare the batch inputs (`BATCH_INPUTS`) a scheme reads besides rewards and groups; a trainer fills
    each one in (`scheme_inputs`) unless the caller passes it."""
    unknown = sorted(set(inputs) - set(BATCH_INPUTS))
    if unknown:
        raise ValueError(f"unknown batch input(s) {unknown}; known: {', '.join(BATCH_INPUTS)}")

    def mark(fn: Scheme) -> Scheme:
        _SCHEME_INPUTS[fn] = inputs
        return fn

    return mark


def scheme_inputs(scheme: str) -> tuple[str, ...]:
    """The batch inputs `scheme` reads (`reads`), in declaration order; () for most schemes."""
    return _SCHEME_INPUTS.get(SCHEMES.get(scheme), ())


def compute_advantages(scheme: str, rewards: Any, group_ids: Any, **params: Any) -> Tensor:
    """Per-trajectory advantages of a named scheme.

    Args:
        scheme: a name in `SCHEMES` (aliases accepted).
        rewards: [N] rewards (anything `torch.as_tensor` accepts; None entries count as missing).
        group_ids: [N] integer group ids (any values, any order).
        **params: the scheme's options by their docs/algorithms.md names (`eps`, `std`, `alpha`, `delta`,
            `k`...).
            `fade` also takes `state=FadeState(...)` (updated in place) and `entropy=H_t`.

    Returns:
        [N] float64 advantages.

    Raises:
        KeyError: unknown scheme (the message names the closest valid one).
        TypeError: an option the scheme does not take (the message lists the valid ones).
        ValueError: a NaN/inf/missing reward (names the trajectory index and group id) or mismatched shapes.
    """
    fn = SCHEMES.get(scheme)
    valid = scheme_params(scheme)
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise TypeError(
            f"advantage scheme {scheme!r} got unexpected option(s) {unknown}; valid options: "
            f"{', '.join(valid) if valid else '(none)'}"
        )
    r, g = _as_batch(rewards, group_ids)
    return fn(r, GroupIndex.from_ids(g), **params)


def scheme_params(scheme: str) -> list[str]:
    """Names of the keyword options a scheme accepts."""
    sig = inspect.signature(SCHEMES.get(scheme))
    return [p.name for p in sig.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]


def _as_batch(rewards: Any, group_ids: Any) -> tuple[Tensor, Tensor]:
    if isinstance(rewards, (list, tuple)):
        rewards = [math.nan if x is None else x for x in rewards]
    r = torch.as_tensor(rewards).to(torch.float64).reshape(-1)
    g = torch.as_tensor(group_ids).reshape(-1)
    if g.is_floating_point():
        if not torch.equal(g, g.round()):
            raise ValueError("group_ids must be integers")
        g = g.long()
    if r.numel() != g.numel():
        raise ValueError(f"rewards has {r.numel()} entries but group_ids has {g.numel()}")
    bad = ~torch.isfinite(r)
    if bool(bad.any()):
        i = int(torch.nonzero(bad)[0])
        kind = "missing or NaN" if math.isnan(float(r[i])) else "infinite"
        raise ValueError(
            f"reward of trajectory {i} (group id {int(g[i])}) is {kind}; "
            f"{int(bad.sum())} trajectory reward(s) are not finite"
        )
    return r, g


def _live(gi: GroupIndex, r: Tensor) -> Tensor:
    """[N] float64 1.0 for trajectories in groups with signal (size >= 2 and not all rewards equal)."""
    return gi.per_item((~gi.constant(r)).double())


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(num))


def _success(r: Tensor, threshold: float) -> Tensor:
    return (r >= threshold).double()


# ---------------------------------------------------------------- mean-centred family


@SCHEMES.register("grpo")
def grpo(r: Tensor, gi: GroupIndex, *, eps: float = 1e-6, std: str = "population") -> Tensor:
    """(r - r̄)/(σ + eps); 0 for degenerate groups (WAPO App. E)."""
    mean = gi.per_item(gi.mean(r))
    sigma = gi.per_item(gi.std(r, std))
    return _safe_div(r - mean, sigma + eps) * _live(gi, r)


@SCHEMES.register("dr_grpo", "mean_centered")
def dr_grpo(r: Tensor, gi: GroupIndex) -> Tensor:
    """r - r̄ (Dr. GRPO; FADE sec. 2.2). m_S = m_F = pq."""
    return (r - gi.per_item(gi.mean(r))) * _live(gi, r)


@SCHEMES.register("rloo")
def rloo(r: Tensor, gi: GroupIndex) -> Tensor:
    """r_i - mean of the other G-1 rewards = G/(G-1)·(r_i - r̄)."""
    size = gi.per_item(gi.size)
    loo_mean = _safe_div(gi.per_item(gi.sum(r)) - r, size - 1)
    return (r - loo_mean) * _live(gi, r)


@SCHEMES.register("skew_r")
def skew_r(r: Tensor, gi: GroupIndex, *, std: str = "population") -> Tensor:
    """(r - r̄)·σ (Skew-R; FADE App. 8.1). m_S = m_F = pq·sqrt(pq)."""
    return (r - gi.per_item(gi.mean(r))) * gi.per_item(gi.std(r, std)) * _live(gi, r)


@SCHEMES.register("grpo_n", "gspo_n")
def grpo_n(r: Tensor, gi: GroupIndex, *, eps: float = 1e-6, std: str = "population") -> Tensor:
    """min(A_grpo, 0): only relative-negative trajectories carry loss (two-stage paper, sec. 4).

    `gspo_n` is the same advantage; the preset pairs it with the sequence ratio.
    """
    return grpo(r, gi, eps=eps, std=std).clamp(max=0.0)


@SCHEMES.register("wapo")
def wapo(r: Tensor, gi: GroupIndex, *, std_normalize: bool = False, eps: float = 1e-6) -> Tensor:
    """A⁺ = max(r - r̄, 0) (WAPO eq. 6-8); with `std_normalize`, max((r - r̄)/(σ + eps), 0).

    For binary rewards A⁺_i = (1 - r̄)·r_i (eq. 6). Groups without a positive advantage are all zero; the
    `wapo` preset's loss also drops them from the group count (eq. 8 conditions on ∃ A⁺ > 0).
    """
    centred = r - gi.per_item(gi.mean(r))
    if std_normalize:
        centred = _safe_div(centred, gi.per_item(gi.std(r)) + eps)
    return centred.clamp(min=0.0) * _live(gi, r)


@SCHEMES.register("wapo_success_norm")
def wapo_success_norm(r: Tensor, gi: GroupIndex) -> Tensor:
    """A⁺/r̄: the WAPO normalizer G·r̄ instead of G (WAPO App. D); factor (1-q)/q. 0 when r̄ <= 0."""
    mean = gi.per_item(gi.mean(r))
    return _safe_div((r - mean).clamp(min=0.0), mean) * _live(gi, r)


@SCHEMES.register("power_alpha")
def power_alpha(r: Tensor, gi: GroupIndex, *, alpha: float = 2.0) -> Tensor:
    """(r - r̄)(1 - r̄)^(α-1) (FADE App. 8.2). m_S = m_F = p·q^α."""
    mean = gi.per_item(gi.mean(r))
    return (r - mean) * (1 - mean).clamp(0.0, 1.0).pow(alpha - 1) * _live(gi, r)


@SCHEMES.register("asym_power_alpha")
def asym_power_alpha(r: Tensor, gi: GroupIndex, *, alpha_s: float = 2.0, alpha_f: float = 1.0) -> Tensor:
    """Successes (r > r̄): (r - r̄)(1 - r̄)^(α_s-1); failures: (r - r̄)·r̄^(α_f-1) (FADE App. 8.2).

    m_S = p·q^α_s, m_F = p^α_f·q.
    """
    mean = gi.per_item(gi.mean(r))
    centred = r - mean
    up = (1 - mean).clamp(0.0, 1.0).pow(alpha_s - 1)
    down = mean.clamp(0.0, 1.0).pow(alpha_f - 1)
    return centred * torch.where(centred > 0, up, down) * _live(gi, r)


@SCHEMES.register("asym_grpo")
def asym_grpo(r: Tensor, gi: GroupIndex, *, delta: float = 0.5) -> Tensor:
    """r - r̄ when r >= r̄, (r - r̄)/δ otherwise (AsymGRPO, FADE App. 8.2). m_S = pq, m_F = pq/δ."""
    if delta <= 0:
        raise ValueError(f"asym_grpo needs delta > 0, got {delta}")
    centred = r - gi.per_item(gi.mean(r))
    return torch.where(centred >= 0, centred, centred / delta) * _live(gi, r)


@SCHEMES.register("asym_rl")
def asym_rl(r: Tensor, gi: GroupIndex, *, delta: float = 0.01) -> Tensor:
    """r - (r̄ + δ) (AsymRL, FADE App. 8.5). m_S = p(q - δ), m_F = q(p + δ) for 0 < c < G.

    Degenerate groups (all rewards equal) give 0 rather than -δ, as for every group-relative scheme.
    """
    return (r - gi.per_item(gi.mean(r)) - delta) * _live(gi, r)


@SCHEMES.register("maxrl")
def maxrl(r: Tensor, gi: GroupIndex, *, eps: float = 0.0) -> Tensor:
    """(r - r̄)/(r̄ + eps); 0 when every sample fails (r̄ <= 0) (MaxRL, FADE App. 8.3). m_S = m_F = q."""
    mean = gi.per_item(gi.mean(r))
    live = _live(gi, r) * (mean > 0).double()
    return _safe_div(r - mean, mean + eps) * live


@SCHEMES.register("quantile")
def quantile(r: Tensor, gi: GroupIndex, *, tau: float = 0.5) -> Tensor:
    """r - Q_τ(r), Q_τ the lower τ-quantile of the group (FADE App. 8.6)."""
    return (r - gi.per_item(gi.quantile(r, tau))) * _live(gi, r)


@SCHEMES.register("mc_grpo")
def mc_grpo(
    r: Tensor, gi: GroupIndex, *, scale: str = "none", mad_floor: float = 0.0, eps: float = 0.0
) -> Tensor:
    """Median-centred r - med(r) (MC-GRPO, FADE App. 8.6); m_S = p·1[p <= 1/2], m_F = q·1[p > 1/2].

    With `scale="mad"` divides by MAD + eps, MAD = median |r - med(r)|; when MAD <= `mad_floor` (every binary
    group has MAD = 0) the scale falls back to 1 instead of blowing up.
    """
    if scale not in ("none", "mad"):
        raise ValueError(f"mc_grpo scale must be 'none' or 'mad', got {scale!r}")
    med = gi.per_item(gi.quantile(r, 0.5))
    centred = (r - med) * _live(gi, r)
    if scale == "none":
        return centred
    mad = gi.per_item(gi.quantile((r - med).abs(), 0.5))
    denom = torch.where(mad > mad_floor, mad + eps, torch.ones_like(mad))
    return centred / denom


# ---------------------------------------------------------------- raw-reward family


@SCHEMES.register("reinforce")
def reinforce(r: Tensor, gi: GroupIndex) -> Tensor:
    """A = r (no baseline); groups of one and constant groups keep their raw reward."""
    return r.clone()


@SCHEMES.register("psr")
def psr(r: Tensor, gi: GroupIndex, *, threshold: float = 0.5) -> Tensor:
    """Positive sample reinforcement: A = r for successes (r >= threshold), 0 otherwise."""
    return r * _success(r, threshold)


@SCHEMES.register("nsr")
def nsr(r: Tensor, gi: GroupIndex, *, threshold: float = 0.5) -> Tensor:
    """Negative sample reinforcement: A = -1 for failures (r < threshold), 0 otherwise."""
    return _success(r, threshold) - 1.0


@SCHEMES.register("w_reinforce")
def w_reinforce(r: Tensor, gi: GroupIndex, *, lam: float = 0.1, threshold: float = 0.5) -> Tensor:
    """W-REINFORCE: +λ for successes, -1 for failures."""
    s = _success(r, threshold)
    return lam * s - (1.0 - s)


# ---------------------------------------------------------------- pass@k family


def _log_binom(n: Tensor, k: float) -> Tensor:
    """log C(n, k) in float64 via lgamma; -inf where n < k or n < 0."""
    n = n.double()
    ok = (n >= k) & (n >= 0)
    safe = torch.where(ok, n, torch.full_like(n, k))
    val = torch.lgamma(safe + 1) - math.lgamma(k + 1) - torch.lgamma(safe - k + 1)
    return torch.where(ok, val, torch.full_like(n, -math.inf))


def _passk_chen_terms(r: Tensor, gi: GroupIndex, k: int, threshold: float) -> tuple[Tensor, Tensor]:
    """Per-trajectory (A_pass@k, live mask) of Chen et al. for binary success s = 1[r >= threshold]."""
    if k < 1:
        raise ValueError(f"pass@k needs k >= 1, got {k}")
    s = _success(r, threshold)
    size = gi.size
    fails = size - gi.sum(s)
    ratio = torch.exp(_log_binom(fails, k) - _log_binom(size, k))
    r_k = 1.0 - ratio
    sigma_k = (r_k * (1.0 - r_k)).clamp_min(0.0).sqrt()
    q_prime = torch.exp(_log_binom(fails - 1, k - 1) - _log_binom(size - 1, k - 1))
    a_s = _safe_div(1.0 - r_k, sigma_k)
    a_f = _safe_div(1.0 - r_k - q_prime, sigma_k)
    live = ((sigma_k > 0) & (size >= k)).double()
    adv = torch.where(s > 0, gi.per_item(a_s), gi.per_item(a_f))
    return adv * gi.per_item(live), gi.per_item(live)


@SCHEMES.register("passk_chen")
def passk_chen(r: Tensor, gi: GroupIndex, *, k: int = 4, threshold: float = 0.5) -> Tensor:
    """Analytical pass@k advantage (Chen et al.; FADE App. 8.4.2).

    R_k = 1 - C(F,k)/C(G,k), σ_k = sqrt(R_k(1-R_k)); successes (1-R_k)/σ_k, failures
    (1 - R_k - C(F-1,k-1)/C(G-1,k-1))/σ_k, binomials in float64 via lgamma. m_S = m_F = p·sqrt((1-R_k)/R_k);
    k = 1 equals `grpo` with population σ. Groups with fewer than k trajectories, or R_k ∈ {0, 1}, give 0.
    """
    return _passk_chen_terms(r, gi, k, threshold)[0]


@SCHEMES.register("passk_mix")
def passk_mix(r: Tensor, gi: GroupIndex, *, k: int = 4, threshold: float = 0.5) -> Tensor:
    """p·Â_pass@k + q·Â_pass@1 with p the group success rate (Chen et al.; FADE App. 8.4.3).

    Â_pass@k is `passk_chen` (exact for finite G) and Â_pass@1 is its k = 1 case (GRPO with population σ).
    """
    p = gi.per_item(gi.mean(_success(r, threshold)))
    a_k, _ = _passk_chen_terms(r, gi, k, threshold)
    a_1, _ = _passk_chen_terms(r, gi, 1, threshold)
    return p * a_k + (1.0 - p) * a_1


@SCHEMES.register("passk_tang")
def passk_tang(r: Tensor, gi: GroupIndex) -> Tensor:
    """Leave-one-out max_k(r) - max_k(r_{-i}) over the group (Tang et al.; FADE App. 8.4.1).

    Only a unique group maximum gets a nonzero advantage (max minus the second largest value); for binary
    rewards that is 1 for a unique success. E[Σ_{i∈S} A_i] = k·p·q^(k-1) with k = G. Groups of one give 0.
    """
    top = gi.reduce(r, "amax")
    at_top = (r == gi.per_item(top)).double()
    n_top = gi.sum(at_top)
    below = torch.where(at_top > 0, torch.full_like(r, -math.inf), r)
    second = gi.reduce(below, "amax")
    gap = torch.where(torch.isfinite(second), top - second, torch.zeros_like(top))
    unique = (n_top == 1).double() * (gi.size >= 2).double()
    return at_top * gi.per_item(gap * unique)


# ---------------------------------------------------------------- length-reshaped GRPO


@SCHEMES.register("t2t")
@reads("lengths")
def t2t(
    r: Tensor,
    gi: GroupIndex,
    *,
    lengths: Any = None,
    alpha: float = 0.1,
    max_length: float | None = None,
    threshold: float = 0.5,
    eps: float = 1e-6,
    std: str = "population",
) -> Tensor:
    """Thickening-to-Thinning (FADE App. 8.2): reshape rewards, then `grpo`.

    R_i = 1 - α·p·L_i if correct, α·(1-p)·L_i if wrong, with p the group success rate and L_i = length_i /
    max_length (default: the group's longest response). `lengths` [N] is required. The degenerate-group
    rule applies to the reshaped rewards: a group of equal raw rewards but different lengths keeps a length
    signal (longer failures, shorter successes are favoured), as in the paper.
    """
    if lengths is None:
        raise TypeError("advantage scheme 't2t' needs lengths=[N] response lengths")
    length = torch.as_tensor(lengths).to(torch.float64).reshape(-1)
    if length.numel() != r.numel():
        raise ValueError(f"t2t: lengths has {length.numel()} entries, rewards has {r.numel()}")
    if max_length is not None:
        norm = length / float(max_length)
    else:
        norm = _safe_div(length, gi.per_item(gi.reduce(length, "amax")))
    s = _success(r, threshold)
    p = gi.per_item(gi.mean(s))
    reshaped = torch.where(s > 0, 1.0 - alpha * p * norm, alpha * (1.0 - p) * norm)
    return grpo(reshaped, gi, eps=eps, std=std)


# ---------------------------------------------------------------- FADE (stateful)


@dataclass
class FadeState:
    """Running state of the FADE scheduler (FADE Algorithm 2); keep it in the checkpoint.

    Attributes:
        p_hat: EMA of the batch success rate, p̂₀ = 0.5.
        h_hat: EMA of the batch entropy H_t; None until the first step, then Ĥ₀ = H₀.
        h_star: target entropy H*; None means H₀/2, fixed at the first step.
        h0: initial entropy H₀ (the first step's H_t unless given).
        step: number of updates applied.
        alpha: α used at the last step (for logging).
        delta: δ used at the last step (for logging).
    """

    p_hat: float = 0.5
    h_hat: float | None = None
    h_star: float | None = None
    h0: float | None = None
    step: int = 0
    alpha: float = 1.0
    delta: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FadeState:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown FadeState field(s) {unknown}; valid fields are {sorted(known)}")
        return cls(**data)


def compute_fade(
    rewards: Any, group_ids: Any, state: FadeState, entropy: float, **params: Any
) -> tuple[Tensor, FadeState]:
    """Functional FADE step: returns (advantages [N], the next state) and leaves `state` untouched."""
    new_state = FadeState.from_dict(state.to_dict())
    adv = compute_advantages("fade", rewards, group_ids, state=new_state, entropy=entropy, **params)
    return adv, new_state


def fade_update(
    state: FadeState,
    batch_mean_reward: float,
    entropy: float,
    *,
    beta: float = 0.02,
    alpha_max: float = 3.0,
    delta_min: float = 0.3,
) -> FadeState:
    """Advance the FADE EMAs by one step and set α, δ (Algorithm 2, lines 5-6), in place; returns `state`.

    p̂ ← β·p̂ + (1-β)·r̄ and Ĥ ← β·Ĥ + (1-β)·H_t, exactly as Algorithm 2 writes them;
    α = clip(3(1-p̂)/(2p̂), 1, α_max), δ = clip(1 + Ĥ - H*, δ_min, 1).
    """
    h_t = float(entropy)
    if not math.isfinite(h_t):
        raise ValueError(f"fade: entropy must be finite, got {entropy}")
    if state.h0 is None:
        state.h0 = h_t
    if state.h_star is None:
        state.h_star = state.h0 / 2
    if state.h_hat is None:
        state.h_hat = state.h0
    state.p_hat = beta * state.p_hat + (1 - beta) * float(batch_mean_reward)
    state.h_hat = beta * state.h_hat + (1 - beta) * h_t
    raw_alpha = alpha_max if state.p_hat <= 0 else 3 * (1 - state.p_hat) / (2 * state.p_hat)
    state.alpha = min(max(raw_alpha, 1.0), alpha_max)
    state.delta = min(max(1 + state.h_hat - state.h_star, delta_min), 1.0)
    state.step += 1
    return state


@SCHEMES.register("fade")
@reads("state", "entropy")
def fade(
    r: Tensor,
    gi: GroupIndex,
    *,
    state: FadeState | None = None,
    entropy: float | None = None,
    beta: float = 0.02,
    alpha_max: float = 3.0,
    delta_min: float = 0.3,
) -> Tensor:
    """FADE (eq. 11, Algorithm 2): (1 - r̄)^(α-1)(r - r̄) / (1 if r >= r̄ else δ).

    `state` (a `FadeState`) is required and is advanced in place by one step before the advantages are
    computed; `entropy` is H_t, the batch mean of per-sequence mean -log π of the sampled tokens.
    """
    if state is None or entropy is None:
        raise TypeError("advantage scheme 'fade' needs state=FadeState() and entropy=H_t (batch mean -log π)")
    fade_update(state, float(r.mean()), entropy, beta=beta, alpha_max=alpha_max, delta_min=delta_min)
    mean = gi.per_item(gi.mean(r))
    centred = r - mean
    scaled = centred * (1 - mean).clamp(0.0, 1.0).pow(state.alpha - 1)
    return torch.where(centred >= 0, scaled, scaled / state.delta) * _live(gi, r)
