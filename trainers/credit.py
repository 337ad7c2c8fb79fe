"""Multi-turn credit: spread trajectory or per-turn advantages onto agent tokens.

`turn_credit: broadcast` (default): every agent token of trajectory i carries A_i (`broadcast_advantages`).
`turn_credit: per_turn`: per-turn rewards combine with the final reward as a discounted return-to-go per turn
(`turn_returns`); at each turn index the advantage scheme scores the returns of the group's trajectories that
reached that turn (`scheme_turn_advantages`; GRPO's normalisation there is `per_turn_advantages`), then each
token takes the advantage of its turn (`turn_token_advantages`). A negative-only scheme therefore stays
negative-only per turn.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from trainers.groups import GroupIndex

Tensor = torch.Tensor


def broadcast_advantages(advantages: Tensor, loss_mask: Tensor) -> Tensor:
    """[N] per-trajectory advantages -> [N, L] token advantages on agent tokens (0 elsewhere)."""
    return advantages.double()[:, None] * loss_mask.double()


def per_turn_advantages(
    turn_rewards: Tensor,
    turn_mask: Tensor,
    final_reward: Tensor,
    group_ids: Tensor,
    *,
    gamma: float = 1.0,
    final_weight: float = 1.0,
    eps: float = 1e-6,
    std: str = "population",
) -> Tensor:
    """Group-normalized discounted return-to-go per turn.

    Args:
        turn_rewards: [N, K] reward of each agent turn (e.g. format validity, retrieval hit); padding ignored.
        turn_mask: [N, K] bool, turns the trajectory actually took (a prefix of each row).
        final_reward: [N] episode reward, added (times `final_weight`) to the last turn.
        group_ids: [N] group of each trajectory.
        gamma: discount between turns.

    Returns:
        [N, K] float64: (R_{i,k} - mean_k)/(σ_k + eps) over the group's trajectories that reached turn k, with
        R_{i,k} = Σ_{j>=k} γ^(j-k) r_{i,j}; 0 at padding and where the (group, turn) cell has a single
        trajectory or equal returns.
    """
    mask = turn_mask.bool()
    k = mask.shape[1]
    ret = turn_returns(turn_rewards, mask, final_reward, group_ids, gamma=gamma, final_weight=final_weight)
    _, g_inv = torch.unique(group_ids, return_inverse=True)
    cell = (g_inv[:, None] * k + torch.arange(k)[None, :])[mask]
    values = ret[mask]
    cells = GroupIndex.from_ids(cell)
    mean = cells.per_item(cells.mean(values))
    sigma = cells.per_item(cells.std(values, std))
    live = cells.per_item((~cells.constant(values)).double())
    out = torch.zeros_like(ret)
    denom = torch.where(live > 0, sigma + eps, torch.ones_like(sigma))
    out[mask] = (values - mean) / denom * live
    return out


def turn_returns(
    turn_rewards: Tensor,
    turn_mask: Tensor,
    final_reward: Tensor,
    group_ids: Tensor,
    *,
    gamma: float = 1.0,
    final_weight: float = 1.0,
) -> Tensor:
    """[N, K] float64 discounted return-to-go R_{i,k} = Σ_{j>=k} γ^(j-k) r_{i,j} of each taken turn (the final
    reward, times `final_weight`, added to the last one); 0 at padding. Shapes as in `per_turn_advantages`.

    Raises:
        ValueError: a NaN/inf turn or final reward (names the trajectory and its group id).
    """
    mask = turn_mask.bool()
    n, k = mask.shape
    bad = (~torch.isfinite(turn_rewards.double()) & mask).any(-1) | ~torch.isfinite(final_reward.double())
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise ValueError(f"non-finite turn or final reward in trajectory {i} (group id {int(group_ids[i])})")
    r = turn_rewards.double() * mask
    last = mask.long().sum(-1) - 1
    has_turn = last >= 0
    r[has_turn, last[has_turn]] += final_weight * final_reward.double()[has_turn]
    ret = torch.zeros_like(r)
    running = torch.zeros(n, dtype=torch.float64)
    for j in range(k - 1, -1, -1):
        running = r[:, j] + gamma * running
        ret[:, j] = running
    return ret * mask


TurnScheme = Callable[[Tensor, Tensor], Tensor]
"""(rows [M] long, their returns [M] float64) -> [M] advantages of those rows within their groups."""


def scheme_turn_advantages(returns: Tensor, turn_mask: Tensor, scheme: TurnScheme) -> Tensor:
    """[N, K] float64 per-turn advantages: at each turn index k, `scheme` scores the returns R_{·,k} [N, K]
    of the trajectories that reached turn k (`turn_mask` [N, K]) within their groups; 0 at padding."""
    mask = turn_mask.bool()
    out = torch.zeros(returns.shape, dtype=torch.float64)
    for k in range(mask.shape[1]):
        rows = mask[:, k].nonzero().squeeze(1)
        if rows.numel():
            out[rows, k] = scheme(rows, returns[rows, k]).double()
    return out


def turn_token_advantages(turn_advantages: Tensor, turn_ids: Tensor, loss_mask: Tensor) -> Tensor:
    """[N, K] per-turn advantages -> [N, L] token advantages by each token's turn (0 off agent tokens)."""
    idx = turn_ids.long().clamp(min=0, max=turn_advantages.shape[1] - 1)
    valid = loss_mask.bool() & (turn_ids >= 0)
    return turn_advantages.double().gather(1, idx) * valid
