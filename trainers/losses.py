"""Policy losses, KL and entropy terms, and step-global aggregation.

Shapes: B sequences (trajectories, or rows of a padded batch) of T positions. `loss_mask` [B, T] is 1 on agent
tokens (the tokens the policy sampled); observation, prompt and padding tokens carry no loss. Advantages are
[B] (one per trajectory, broadcast to its tokens) or [B, T] (per-token, e.g. after a reweighting filter).

Aggregation is expressed as per-token weights w [B, T] with loss = Σ w·ℓ. A `LossNormalizer` is built once per
optimizer step from the whole minibatch and then asked for the weights of each micro-batch, so every
denominator (token count, sequence count, group count, group sizes) is global to the step and the sum of the
micro-batch gradients equals the full-minibatch gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from agentrl.core.registry import Registry

Tensor = torch.Tensor

AGGREGATIONS = (
    "token_mean",
    "seq_mean_token_mean",
    "seq_mean_token_sum",
    "fixed_length",
    "token_budget",
    "renormalized_kept",
)
RATIOS = ("token", "sequence", "wapo")
OFFPOLICY_MODES = ("none", "token_truncate", "sequence_truncate", "token_mask", "sequence_mask")


def _tokenwise(adv: Tensor, like: Tensor) -> Tensor:
    """[B] or [B, T] advantages -> [B, T] in the dtype of `like`."""
    adv = adv.to(like.dtype)
    return adv[:, None].expand_as(like) if adv.dim() == 1 else adv


def _log_ratio(logp: Tensor, old_logp: Tensor, clamp: float) -> Tensor:
    return (logp - old_logp).clamp(-clamp, clamp)


def ppo_token_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    dual_clip: float | None = None,
    log_ratio_clip: float = 20.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Token-ratio PPO: ℓ_t = -min(ρ_t A, clip(ρ_t, 1-ε_low, 1+ε_high) A), dual-clipped at c·A for A < 0.

    Args:
        logp, old_logp: [B, T] log-probabilities under the current and the sampling policy.
        advantages: [B] or [B, T].
        dual_clip: c > 1 bounds the loss of a negative-advantage token at -c·A (None disables it).
        log_ratio_clip: log ρ is clamped to ±this before exp.

    Returns:
        ℓ [B, T] and a dict with `ratio`, `clipped_low`, `clipped_high`, `dual_clipped` ([B, T]).
    """
    adv = _tokenwise(advantages, logp)
    ratio = _log_ratio(logp, old_logp, log_ratio_clip).exp()
    clipped = ratio.clamp(1 - eps_low, 1 + eps_high)
    obj = torch.minimum(ratio * adv, clipped * adv)
    dual = torch.zeros_like(ratio, dtype=torch.bool)
    if dual_clip is not None:
        if dual_clip <= 1:
            raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
        floor = dual_clip * adv
        dual = (adv < 0) & (obj < floor)
        obj = torch.where(adv < 0, torch.maximum(obj, floor), obj)
    info = {
        "ratio": ratio.detach(),
        "clipped_low": ((ratio < 1 - eps_low) & (adv < 0)).detach(),
        "clipped_high": ((ratio > 1 + eps_high) & (adv > 0)).detach(),
        "dual_clipped": dual.detach(),
    }
    return -obj, info


def offpolicy_weights(
    old_logp: Tensor,
    behaviour_logp: Tensor,
    loss_mask: Tensor,
    mode: str,
    *,
    cap: float = 2.0,
    floor: float | None = None,
    log_ratio_clip: float = 20.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Importance weights [B, T] that correct samples drawn by another policy or precision (the sampler,
    `behaviour_logp`) toward the policy the update starts from (`old_logp`); no gradient flows through them.

    With w_t = π_old(y_t) / π_behaviour(y_t) and, per sequence, w_i = Π_t w_t over its loss tokens:

    * `token_truncate`: min(w_t, cap) (truncated importance sampling, TIS);
    * `sequence_truncate`: min(w_i, cap) on every token of sequence i;
    * `token_mask`: 1 where floor <= w_t <= cap, else 0 (masked importance sampling, MIS);
    * `sequence_mask`: 1 on every token of sequence i when floor <= w_i <= cap, else 0;
    * `none`: 1.

    `floor` defaults to 1/cap. log w is clamped to ±log_ratio_clip before exp. Returns the weights (0 off
    `loss_mask`) and `raw` (w_t or w_i broadcast, before truncation or masking), `truncated`, `masked`
    ([B, T] bool).
    """
    if mode not in OFFPOLICY_MODES:
        raise ValueError(f"unknown off-policy correction {mode!r}; valid: {', '.join(OFFPOLICY_MODES)}")
    low = 1.0 / cap if floor is None else floor
    m = loss_mask.to(torch.float64)
    log_w = (old_logp.detach().double() - behaviour_logp.detach().double()) * m
    if mode.startswith("sequence"):
        log_w = log_w.sum(-1, keepdim=True).expand_as(log_w)
    raw = log_w.clamp(-log_ratio_clip, log_ratio_clip).exp()
    on = loss_mask.bool()
    none = torch.zeros_like(on)
    if mode.endswith("truncate"):
        truncated = (raw > cap) & on
        weights, masked = raw.clamp(max=cap), none
    elif mode.endswith("mask"):
        masked = ((raw > cap) | (raw < low)) & on
        weights, truncated = (~masked).double(), none
    else:
        weights, truncated, masked = torch.ones_like(raw), none, none
    weights, raw = (weights * m).to(old_logp.dtype), (raw * m).to(old_logp.dtype)
    return weights, {"raw": raw, "truncated": truncated, "masked": masked}


def sequence_log_ratio(
    logp: Tensor, old_logp: Tensor, loss_mask: Tensor, log_ratio_clip: float = 20.0
) -> Tensor:
    """[B] GSPO's log s_i = mean over the sequence's loss tokens of log ρ_t (clamped to ±log_ratio_clip)."""
    m = loss_mask.to(logp.dtype)
    mean = ((logp - old_logp) * m).sum(-1) / m.sum(-1).clamp_min(1)
    return mean.clamp(-log_ratio_clip, log_ratio_clip)


def gspo_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    loss_mask: Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    log_ratio_clip: float = 20.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GSPO sequence ratio: s_i = exp(mean_t log ρ_t); ℓ_t = -min(s_i A_i, clip(s_i, 1-ε_low, 1+ε_high) A_i).

    Every token of sequence i carries the same ℓ (so `seq_mean_token_mean` aggregation gives GSPO's
    1/G Σ_i ℓ_i); its gradient w.r.t. log π_t is -A_i s_i/|y_i| inside the clip range and 0 outside.

    Args:
        advantages: [B] per-sequence advantages. loss_mask: [B, T].
    """
    if advantages.dim() != 1:
        raise ValueError("gspo_loss needs per-sequence advantages [B]")
    s = sequence_log_ratio(logp, old_logp, loss_mask, log_ratio_clip).exp()
    adv = advantages.to(logp.dtype)
    clipped = s.clamp(1 - eps_low, 1 + eps_high)
    seq_loss = -torch.minimum(s * adv, clipped * adv)
    token_loss = seq_loss[:, None].expand_as(logp)
    expand = torch.ones_like(logp, dtype=torch.bool)
    info = {
        "ratio": s.detach()[:, None].expand_as(logp),
        "clipped_low": ((s < 1 - eps_low) & (adv < 0)).detach()[:, None] & expand,
        "clipped_high": ((s > 1 + eps_high) & (adv > 0)).detach()[:, None] & expand,
    }
    return token_loss, info


def wapo_loss(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, *, eps_high: float = 0.2, log_ratio_clip: float = 20.0
) -> tuple[Tensor, dict[str, Tensor]]:
    """WAPO eq. 8: ℓ_t = -A⁺·min(ρ_t, 1 + ε), A⁺ = max(A, 0) (upper clip only).

    Trajectories with A <= 0 contribute exactly zero loss and zero gradient.
    """
    adv = _tokenwise(advantages, logp).clamp(min=0)
    ratio = _log_ratio(logp, old_logp, log_ratio_clip).exp()
    info = {
        "ratio": ratio.detach(),
        "clipped_low": torch.zeros_like(ratio, dtype=torch.bool),
        "clipped_high": ((ratio > 1 + eps_high) & (adv > 0)).detach(),
    }
    return -adv * ratio.clamp(max=1 + eps_high), info


KL_ESTIMATORS: Registry[Any] = Registry("KL estimator")


@KL_ESTIMATORS.register("k1")
def kl_k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """log π - log π_ref."""
    return logp - ref_logp


@KL_ESTIMATORS.register("k2")
def kl_k2(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """½ (log π - log π_ref)²."""
    return 0.5 * (logp - ref_logp) ** 2


@KL_ESTIMATORS.register("k3")
def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """exp(log π_ref - log π) - (log π_ref - log π) - 1 (non-negative, unbiased)."""
    d = (ref_logp - logp).clamp(-20.0, 20.0)
    return d.exp() - d - 1


def kl_penalty(logp: Tensor, ref_logp: Tensor, estimator: str = "k3") -> Tensor:
    """[B, T] per-token KL(π ‖ π_ref) estimate."""
    return KL_ESTIMATORS.get(estimator)(logp, ref_logp)


@dataclass
class LossNormalizer:
    """Step-global denominators; build with `LossNormalizer.build` on the whole minibatch.

    Attributes:
        mode: one of AGGREGATIONS.
        num_tokens: counted tokens of the minibatch (kept tokens for `renormalized_kept`).
        num_sequences: sequences of the minibatch.
        num_groups: groups of the minibatch (only groups with a nonzero advantage when built with
            `active_groups_only`).
        group_ids: [num_groups] sorted group ids known to the step (for `fixed_length`).
        group_sizes: [num_groups] trajectories per group in the whole minibatch.
        group_active: [num_groups] bool, whether the group counts towards the loss.
        max_length: T_max for `fixed_length` and `token_budget`.
    """

    mode: str
    num_tokens: float
    num_sequences: float
    num_groups: float
    group_ids: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    group_sizes: Tensor = field(default_factory=lambda: torch.zeros(0))
    group_active: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))
    max_length: float | None = None

    @classmethod
    def build(
        cls,
        mode: str,
        loss_mask: Tensor,
        group_ids: Tensor | None = None,
        *,
        max_length: int | None = None,
        advantages: Tensor | None = None,
        active_groups_only: bool = False,
    ) -> LossNormalizer:
        """Denominators of one optimizer step.

        Args:
            mode: aggregation mode (see `token_weights`).
            loss_mask: [B, T] mask of tokens that carry loss in the whole minibatch; pass the filtered keep
                mask to renormalize over kept tokens.
            group_ids: [B] group of each sequence (needed by `fixed_length`).
            max_length: T_max (needed by `fixed_length`).
            advantages: [B] (or [B, T]) advantages, needed with `active_groups_only`.
            active_groups_only: `fixed_length` averages over groups with at least one nonzero advantage
                (WAPO eq. 8 conditions on ∃ A⁺ > 0); other groups still count in nothing.
        """
        if mode not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {mode!r}; valid: {', '.join(AGGREGATIONS)}")
        mask = loss_mask.bool()
        num_tokens = float(mask.sum())
        num_sequences = float(mask.shape[0])
        ids = torch.zeros(0, dtype=torch.long)
        sizes = torch.zeros(0)
        active = torch.zeros(0, dtype=torch.bool)
        num_groups = 0.0
        if mode == "token_budget" and max_length is None:
            raise ValueError("token_budget aggregation needs max_length (T_max)")
        if mode == "fixed_length":
            if group_ids is None or max_length is None:
                raise ValueError("fixed_length aggregation needs group_ids and max_length")
            ids, inverse, counts = torch.unique(group_ids.long(), return_inverse=True, return_counts=True)
            sizes = counts.double()
            active = torch.ones(ids.numel(), dtype=torch.bool)
            if active_groups_only:
                if advantages is None:
                    raise ValueError("active_groups_only needs the minibatch advantages")
                adv = advantages if advantages.dim() == 1 else advantages.abs().amax(-1)
                nonzero = torch.zeros(ids.numel(), dtype=torch.long).index_add_(0, inverse, (adv != 0).long())
                active = nonzero > 0
            num_groups = float(active.sum())
        return cls(mode, num_tokens, num_sequences, num_groups, ids, sizes, active, max_length)

    def token_weights(
        self, loss_mask: Tensor, group_ids: Tensor | None = None, count_mask: Tensor | None = None
    ) -> Tensor:
        """[b, T] aggregation weights for a micro-batch (any subset of the minibatch's sequences).

        - token_mean / renormalized_kept: mask / (counted tokens of the step)            (DAPO, STAPO eq. 1)
        - seq_mean_token_mean: mask / (|y_i| · sequences of the step)                      (GRPO)
        - seq_mean_token_sum: mask / (sequences of the step)
        - fixed_length: mask / (G_g · T_max · groups of the step)                         (Dr.GRPO, WAPO)
        - token_budget: mask / (T_max · sequences of the step), a constant token budget   (FADE App. 11.1)

        `count_mask` [b, T] holds the tokens |y_i| counts (default: `loss_mask`). After token filters pass
        their `count_mask`: the kept tokens when renormalizing, all the sequence's loss tokens otherwise.
        """
        m = loss_mask.to(torch.float64)
        if self.mode in ("token_mean", "renormalized_kept"):
            w = m / max(self.num_tokens, 1.0)
        elif self.mode == "seq_mean_token_mean":
            counted = m if count_mask is None else count_mask.to(torch.float64)
            w = m / counted.sum(-1, keepdim=True).clamp_min(1) / max(self.num_sequences, 1.0)
        elif self.mode == "seq_mean_token_sum":
            w = m / max(self.num_sequences, 1.0)
        elif self.mode == "token_budget":
            assert self.max_length is not None
            w = m / (float(self.max_length) * max(self.num_sequences, 1.0))
        else:
            if group_ids is None or self.max_length is None:
                raise ValueError("fixed_length aggregation needs the micro-batch group_ids")
            pos = torch.searchsorted(self.group_ids, group_ids.long())
            pos = pos.clamp(max=max(self.group_ids.numel() - 1, 0))
            if self.group_ids.numel() == 0 or not bool((self.group_ids[pos] == group_ids.long()).all()):
                raise ValueError("micro-batch holds a group id the normalizer was not built with")
            per_seq = self.group_active[pos].double() / (self.group_sizes[pos] * float(self.max_length))
            w = m * per_seq[:, None] / max(self.num_groups, 1.0)
        return w


@dataclass
class LossConfig:
    """Policy-loss settings (one YAML block).

    Attributes:
        ratio: "token" (PPO), "sequence" (GSPO) or "wapo" (upper clip only, A⁺).
        eps_low, eps_high: clip range of the ratio.
        dual_clip: c for A < 0 with the token ratio (None disables).
        log_ratio_clip: clamp of log ρ before exp.
        aggregation: one of AGGREGATIONS.
        max_length: T_max for `fixed_length` and `token_budget`; None lets the trainer use the run's response
            budget.
        active_groups_only: `fixed_length` counts only groups with a nonzero advantage.
        kl_coef, kl_estimator: KL(π ‖ π_ref) penalty (coefficient 0 disables it).
        entropy_coef: entropy bonus (subtracted from the loss).
        offpolicy: importance correction of samples whose log-probs come from another policy or precision
            (`offpolicy_weights`: `none`, `token_truncate`, `sequence_truncate`, `token_mask`,
            `sequence_mask`); each token's loss is multiplied by its weight.
        offpolicy_cap: the truncation cap, and the mask's upper threshold.
        offpolicy_floor: the mask's lower threshold (None: 1 / offpolicy_cap).
    """

    ratio: str = "token"
    eps_low: float = 0.2
    eps_high: float = 0.2
    dual_clip: float | None = None
    log_ratio_clip: float = 20.0
    aggregation: str = "seq_mean_token_mean"
    max_length: int | None = None
    active_groups_only: bool = False
    kl_coef: float = 0.0
    kl_estimator: str = "k3"
    entropy_coef: float = 0.0
    offpolicy: str = "none"
    offpolicy_cap: float = 2.0
    offpolicy_floor: float | None = None

    def __post_init__(self) -> None:
        if self.offpolicy not in OFFPOLICY_MODES:
            raise ValueError(f"unknown offpolicy {self.offpolicy!r}; valid: {', '.join(OFFPOLICY_MODES)}")
        if not 1.0 <= self.offpolicy_cap < math.inf:
            raise ValueError(f"offpolicy_cap must be a finite number >= 1, got {self.offpolicy_cap}")
        floor = self.offpolicy_floor
        if floor is not None and not 0.0 <= floor <= 1.0:
            raise ValueError(f"offpolicy_floor must lie in [0, 1] (or be null), got {floor}")
        if self.ratio not in RATIOS:
            raise ValueError(f"unknown ratio {self.ratio!r}; valid: {', '.join(RATIOS)}")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {self.aggregation!r}; valid: {', '.join(AGGREGATIONS)}")
        if self.kl_estimator not in KL_ESTIMATORS:
            KL_ESTIMATORS.get(self.kl_estimator)


def token_policy_loss(
    config: LossConfig, logp: Tensor, old_logp: Tensor, advantages: Tensor, loss_mask: Tensor
) -> tuple[Tensor, dict[str, Tensor]]:
    """[B, T] per-token policy loss for the configured ratio type (before aggregation)."""
    if config.ratio == "token":
        return ppo_token_loss(
            logp, old_logp, advantages, eps_low=config.eps_low, eps_high=config.eps_high,
            dual_clip=config.dual_clip, log_ratio_clip=config.log_ratio_clip,
        )  # fmt: skip
    if config.ratio == "sequence":
        return gspo_loss(
            logp, old_logp, advantages, loss_mask, eps_low=config.eps_low, eps_high=config.eps_high,
            log_ratio_clip=config.log_ratio_clip,
        )  # fmt: skip
    return wapo_loss(
        logp, old_logp, advantages, eps_high=config.eps_high, log_ratio_clip=config.log_ratio_clip
    )


def policy_loss(
    config: LossConfig,
    normalizer: LossNormalizer,
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    loss_mask: Tensor,
    *,
    group_ids: Tensor | None = None,
    token_weights: Tensor | None = None,
    ref_logp: Tensor | None = None,
    entropy: Tensor | None = None,
    count_mask: Tensor | None = None,
    behaviour_logp: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Scalar loss of one micro-batch; summing it over the step's micro-batches gives the minibatch loss.

    Args:
        config: the loss settings.
        normalizer: built once for the whole minibatch (`LossNormalizer.build`).
        logp: [b, T] current log π (with gradient). old_logp: [b, T] sampling log-probs.
        advantages: [b] or [b, T].
        loss_mask: [b, T] tokens carrying loss (after filters that drop tokens).
        group_ids: [b] (for `fixed_length`).
        token_weights: optional [b, T] multiplicative weights (e.g. covariance reweighting); they scale each
            token's whole loss term, which for positive weights equals scaling its advantage.
        ref_logp: [b, T] reference log-probs (needed when kl_coef != 0).
        entropy: [b, T] token entropy with gradient (needed when entropy_coef != 0).
        count_mask: [b, T] tokens that each sequence's length |y_i| counts under `seq_mean_token_mean`
            (default: `loss_mask`); pass the filters' `FilterResult.count_mask` rows, so that
            `renormalize=False` keeps every original loss token in the denominator.
        behaviour_logp: [b, T] the sampler's log-probs, when `config.offpolicy` corrects toward `old_logp`
            (`offpolicy_weights`; None: no correction).

    Returns:
        (loss, info): info holds the per-token loss pieces (`policy`, `kl`, `ratio`, clip masks, and with a
        correction `offpolicy_raw`, `offpolicy_truncated`, `offpolicy_masked`).
    """
    token_loss, info = token_policy_loss(config, logp, old_logp, advantages, loss_mask)
    if token_weights is not None:
        token_loss = token_loss * token_weights.to(token_loss.dtype)
    if config.offpolicy != "none" and behaviour_logp is not None:
        weights, pieces = offpolicy_weights(
            old_logp, behaviour_logp, loss_mask, config.offpolicy, cap=config.offpolicy_cap,
            floor=config.offpolicy_floor, log_ratio_clip=config.log_ratio_clip,
        )  # fmt: skip
        token_loss = token_loss * weights.to(token_loss.dtype)
        info.update({f"offpolicy_{k}": v for k, v in pieces.items()})
    info["policy"] = token_loss.detach()
    total = token_loss
    if config.kl_coef != 0:
        if ref_logp is None:
            raise ValueError("kl_coef != 0 needs ref_logp")
        kl = kl_penalty(logp, ref_logp, config.kl_estimator)
        info["kl"] = kl.detach()
        total = total + config.kl_coef * kl
    if config.entropy_coef != 0:
        if entropy is None:
            raise ValueError("entropy_coef != 0 needs the token entropy")
        total = total - config.entropy_coef * entropy
    weights = normalizer.token_weights(loss_mask, group_ids, count_mask).to(total.dtype)
    return (total * weights).sum(), info
