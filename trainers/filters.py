"""Token-level filters and weights, composable with any advantage scheme.

Every filter reads detached per-token statistics of the current policy (from `trainers.logprobs.token_stats`
under `torch.no_grad()`), the per-trajectory advantages and the loss mask, and returns a `FilterResult`:

* `keep` [B, T] bool: tokens still carrying loss (a subset of the loss mask);
* `weights` [B, T] float: multiplicative per-token weights (1 where the filter does not reweight);
* `renormalize`: whether the loss denominators should count only kept tokens. Pass `result.count_mask` to
  `LossNormalizer.build` and its rows to `policy_loss(count_mask=...)` (it is `keep` when renormalizing, else
  the original loss mask), and `result.keep` as the micro-batches' loss mask.

Scope: thresholds that depend on a distribution (STAPO's entropy quantile, the high-entropy top-ρ, the
covariance statistics) are computed over the tokens passed in, so call the filters once per optimizer step on
the whole minibatch, then slice the result into micro-batches. The statistics come from the no-grad pass that
recomputes the minibatch's log-probs before the update (`token_stats` gives log π, entropy and C(p) at once).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from agentrl.core.registry import Registry
from trainers.groups import GroupIndex

Tensor = torch.Tensor

TAXONOMY = ("pos_peak", "pos_valley", "neg_peak", "neg_valley", "pos", "neg", "peak", "valley")


@dataclass
class FilterInputs:
    """Detached per-token statistics of one minibatch.

    Attributes:
        loss_mask: [B, T] agent tokens.
        advantages: [B] per-trajectory advantages (or [B, T]).
        logprobs: [B, T] log π(y_t) under the current policy.
        entropy: [B, T] token entropy H_t.
        collision: [B, T] C(p) = Σ_j p_j² (peak/valley reference level).
        group_ids: [B] group of each trajectory (covariance reweighting).
    """

    loss_mask: Tensor
    advantages: Tensor
    logprobs: Tensor | None = None
    entropy: Tensor | None = None
    collision: Tensor | None = None
    group_ids: Tensor | None = None

    def token_advantages(self) -> Tensor:
        a = self.advantages.double()
        return a[:, None].expand(self.loss_mask.shape) if a.dim() == 1 else a

    def need(self, name: str, owner: str) -> Tensor:
        value = getattr(self, name)
        if value is None:
            raise ValueError(f"token filter {owner!r} needs {name}")
        return value.detach()


@dataclass
class FilterResult:
    """What a filter tells the aggregator (see module docstring)."""

    keep: Tensor
    weights: Tensor
    renormalize: bool = True
    original_mask: Tensor | None = None

    @property
    def count_mask(self) -> Tensor:
        """[B, T] the mask whose tokens the loss denominators count."""
        if self.renormalize or self.original_mask is None:
            return self.keep
        return self.original_mask

    @property
    def dropped_fraction(self) -> float:
        """Fraction of the loss-mask tokens the filters dropped."""
        base = self.original_mask if self.original_mask is not None else self.keep
        total = float(base.sum())
        return 0.0 if total == 0 else 1.0 - float(self.keep.sum()) / total


def masked_quantile(values: Tensor, mask: Tensor, q: float) -> float:
    """Lower q-quantile (the ceil(q·n)-th smallest) of `values` over `mask`; nan when the mask is empty."""
    v = values.detach()[mask.bool()].double()
    if v.numel() == 0:
        return float("nan")
    v = torch.sort(v).values
    idx = min(max(math.ceil(q * v.numel() - 1e-9) - 1, 0), v.numel() - 1)
    return float(v[idx])


def top_fraction_threshold(values: Tensor, mask: Tensor, fraction: float) -> float:
    """The k-th largest of `values` over `mask` with k = ceil(fraction·n) (at least 1), so `values >= it`
    keeps the top `fraction` of the n tokens (2 of 10 for 0.2, 2 of 9); nan when the mask is empty."""
    v = values.detach()[mask.bool()].double()
    if v.numel() == 0:
        return float("nan")
    k = min(max(math.ceil(fraction * v.numel() - 1e-9), 1), v.numel())
    return float(torch.topk(v, k).values[-1])


def stapo_mask(inputs: FilterInputs, *, tau_p: float = 2e-3, entropy_top_fraction: float = 0.2) -> Tensor:
    """STAPO S2T keep mask [B, T] (STAPO eq. 1, Remark 3.5).

    Drops token t of trajectory i when A_i > 0, π(y_t) < τ_p (absolute) and H_t < τ_h, where τ_h is the
    smallest entropy of the top `entropy_top_fraction` of the minibatch's loss tokens
    (`top_fraction_threshold`).
    """
    mask = inputs.loss_mask.bool()
    probs = inputs.need("logprobs", "stapo").exp()
    entropy = inputs.need("entropy", "stapo")
    tau_h = top_fraction_threshold(entropy, mask, entropy_top_fraction)
    spurious = (inputs.token_advantages() > 0) & (probs < tau_p) & (entropy < tau_h) & mask
    return mask & ~spurious


def high_entropy_mask(inputs: FilterInputs, *, top_fraction: float = 0.2) -> Tensor:
    """Keep only the top-ρ entropy tokens of the minibatch ("20-Entropy"): the ceil(ρ·n) highest H_t."""
    mask = inputs.loss_mask.bool()
    entropy = inputs.need("entropy", "high_entropy")
    threshold = top_fraction_threshold(entropy, mask, top_fraction)
    return mask & (entropy >= threshold)


def taxonomy_masks(inputs: FilterInputs) -> dict[str, Tensor]:
    """WAPO eq. 2 token taxonomy: peak if π(y_t) >= C(p), valley otherwise, crossed with the sign of A.

    Returns the eight [B, T] bool masks of TAXONOMY (tokens with A = 0 are in neither pos nor neg).
    """
    mask = inputs.loss_mask.bool()
    probs = inputs.need("logprobs", "peak_valley").exp()
    peak = (probs >= inputs.need("collision", "peak_valley")) & mask
    valley = ~peak & mask
    adv = inputs.token_advantages()
    pos = (adv > 0) & mask
    neg = (adv < 0) & mask
    return {
        "pos_peak": pos & peak,
        "pos_valley": pos & valley,
        "neg_peak": neg & peak,
        "neg_valley": neg & valley,
        "pos": pos,
        "neg": neg,
        "peak": peak,
        "valley": valley,
    }


def covariance_values(inputs: FilterInputs) -> Tensor:
    """[B, T] c_t = (log π_t - mean log π)(A_i - mean A), means over the group's loss tokens (0 off-mask).

    A group whose log-probs (or advantages) are all equal gets c = 0 exactly, not float residue.
    """
    mask, groups = _loss_token_groups(inputs)
    lp = inputs.need("logprobs", "cov_gaussian").double()[mask]
    adv = inputs.token_advantages()[mask]
    c = torch.zeros(mask.shape, dtype=torch.float64)
    c[mask] = _centered(lp, groups) * _centered(adv, groups)
    return c


def _row_groups(inputs: FilterInputs) -> GroupIndex:
    """Group index over the B rows (one group when the inputs carry no group ids)."""
    gid = inputs.group_ids
    if gid is None:
        gid = torch.zeros(inputs.loss_mask.shape[0], dtype=torch.long)
    return GroupIndex.from_ids(gid)


def _loss_token_groups(inputs: FilterInputs) -> tuple[Tensor, GroupIndex]:
    """The loss mask [B, T] bool and a group index over its tokens, in `x[mask]` order."""
    mask = inputs.loss_mask.bool()
    token_groups = _row_groups(inputs).inverse[:, None].expand(mask.shape)[mask]
    return mask, GroupIndex.from_ids(token_groups)


def _centered(x: Tensor, groups: GroupIndex) -> Tensor:
    """[N] x minus its group mean, shifted by a member of the group first, so that a group of equal values
    gives exactly 0 (a plain sum / count of equal values can miss the value by an ulp)."""
    shifted = x - groups.per_item(groups.reduce(x, "amax"))
    return shifted - groups.per_item(groups.mean(shifted))


def gaussian_weights(c: Tensor, groups: GroupIndex) -> Tensor:
    """[N] normalized weights w̃ of N covariance values c, one group index entry per value.

    w = exp(-c²/(2σ_c²)), σ_c² the population variance of c within the group, then w̃ = w·n/Σw over the
    group's n values. A group whose values are all equal (σ_c = 0) gets w̃ = 1 exactly. The exponent is taken
    relative to the group's smallest c² (the constant factor cancels in w·n/Σw), so a tight group far from 0
    never underflows to all zeros.
    """
    var = groups.per_item(groups.mean(_centered(c, groups) ** 2))
    square = c * c
    excess = square - groups.per_item(groups.reduce(square, "amin"))
    exponent = torch.where(var > 0, excess / (2 * var.clamp_min(1e-300)), torch.zeros_like(c))
    w = torch.exp(-exponent)
    return w * groups.per_item(groups.size / groups.sum(w))


def cov_gaussian_weights(inputs: FilterInputs) -> Tensor:
    """[B, T] covariance-aware Gaussian reweighting (CW-GRPO, sec. 2.3); 0 off the loss mask.

    w_t = exp(-c_t²/(2σ_c²)) with σ_c the standard deviation of c over the group's loss tokens, then
    w̃_t = w_t·N/Σw over the group's N tokens, so each group keeps its total weight. σ_c = 0 (all c_t of the
    group equal, e.g. equal advantages) gives w = 1 exactly; see `gaussian_weights`.
    """
    mask, groups = _loss_token_groups(inputs)
    weights = torch.zeros(mask.shape, dtype=torch.float64)
    weights[mask] = gaussian_weights(covariance_values(inputs)[mask], groups)
    return weights


FilterFn = Callable[..., FilterResult]
FILTERS: Registry[FilterFn] = Registry("token filter")


def _result(inputs: FilterInputs, keep: Tensor | None = None, weights: Tensor | None = None) -> FilterResult:
    mask = inputs.loss_mask.bool()
    return FilterResult(
        keep=mask if keep is None else keep,
        weights=torch.ones_like(mask, dtype=torch.float64) if weights is None else weights,
        original_mask=mask,
    )


@FILTERS.register("stapo", "s2t")
def _stapo(inputs: FilterInputs, *, tau_p: float = 2e-3, entropy_top_fraction: float = 0.2) -> FilterResult:
    return _result(inputs, keep=stapo_mask(inputs, tau_p=tau_p, entropy_top_fraction=entropy_top_fraction))


@FILTERS.register("high_entropy")
def _high_entropy(inputs: FilterInputs, *, top_fraction: float = 0.2) -> FilterResult:
    return _result(inputs, keep=high_entropy_mask(inputs, top_fraction=top_fraction))


@FILTERS.register("cov_gaussian")
def _cov_gaussian(inputs: FilterInputs) -> FilterResult:
    return _result(inputs, weights=cov_gaussian_weights(inputs))


def _taxonomy_filter(name: str) -> FilterFn:
    def keep_only(inputs: FilterInputs) -> FilterResult:
        return _result(inputs, keep=taxonomy_masks(inputs)[name])

    keep_only.__doc__ = f"Keep only {name} tokens (WAPO eq. 2 taxonomy)."
    return keep_only


for _name in TAXONOMY:
    FILTERS.add(_name, _taxonomy_filter(_name))


def apply_filters(
    inputs: FilterInputs, specs: list[str | dict[str, Any]] | None, *, renormalize: bool = True
) -> FilterResult:
    """Compose filters: keep = AND of the keeps, weights = product of the weights.

    Args:
        inputs: minibatch statistics.
        specs: filter names, or dicts `{"name": ..., **options}` (e.g. `{"name": "stapo", "tau_p": 1e-3}`).
        renormalize: denominators count only kept tokens (STAPO) when True, all loss tokens when False.
    """
    mask = inputs.loss_mask.bool()
    keep = mask.clone()
    weights = torch.ones_like(mask, dtype=torch.float64)
    for spec in specs or []:
        if isinstance(spec, str):
            name, options = spec, {}
        else:
            options = dict(spec)
            name = options.pop("name")
        result = FILTERS.get(name)(inputs, **options)
        keep &= result.keep
        weights = weights * result.weights
    return FilterResult(
        keep=keep, weights=weights * keep.double(), renormalize=renormalize, original_mask=mask
    )
