"""From a step's trajectories to the worker's `PolicyBatch`es: advantages (with the batch inputs the scheme
declares), multi-turn credit, padded tensors, token filters and the step-global loss denominators of each
minibatch."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch

from agentrl.core.types import Trajectory
from agentrl.rollout.collate import collate
from trainers.advantages import FadeState, compute_advantages, scheme_inputs
from trainers.batching import PolicyBatch
from trainers.credit import scheme_turn_advantages, turn_returns, turn_token_advantages
from trainers.filters import FilterInputs, FilterResult, apply_filters
from trainers.losses import LossNormalizer
from trainers.presets import Preset

Tensor = torch.Tensor


@dataclass
class StepTensors:
    """A step's episodes as tensors.

    tensors: `agentrl.rollout.collate.collate` output ([N, L] ids, masks, sampler log-probs, turn ids, ...).
    advantages: [N] float64 per-episode advantages of the scheme.
    token_advantages: [N] (broadcast credit: one value per episode) or [N, L] (per-turn credit).
    """

    tensors: dict[str, Any]
    advantages: Tensor
    token_advantages: Tensor

    @property
    def size(self) -> int:
        return int(self.advantages.shape[0])


def pad_token_id(tokenizer: Any) -> int:
    """The id that pads a batch's rows: the tokenizer's pad token, else 0 (padding is masked either way)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def trajectory_advantages(
    trajectories: list[Trajectory],
    preset: Preset,
    fade_state: FadeState | None = None,
    rewards: Tensor | None = None,
) -> Tensor:
    """[N] float64 advantages of the preset's scheme, with every batch input it reads
    (`trainers.advantages.scheme_inputs`) taken from the trajectories: `lengths` (agent tokens),
    `entropy` (mean sampled -log π) and `state` (`fade_state`, advanced in place; a fresh one when None).
    `rewards` [N] replaces the episode rewards (a turn's return-to-go under per-turn credit)."""
    if rewards is None:
        rewards = torch.tensor([t.reward for t in trajectories], dtype=torch.float64)
    groups = torch.tensor([t.group_id for t in trajectories], dtype=torch.int64)
    params = dict(preset.scheme_params)
    inputs = {
        "lengths": lambda: torch.tensor([t.num_agent_tokens for t in trajectories], dtype=torch.float64),
        "entropy": lambda: mean_negative_logprob(trajectories),
        "state": lambda: fade_state if fade_state is not None else FadeState(),
    }
    for name in scheme_inputs(preset.scheme):
        if name not in params:
            params[name] = inputs[name]()
    return compute_advantages(preset.scheme, rewards, groups, **params)


def mean_negative_logprob(trajectories: list[Trajectory]) -> float:
    """Batch mean of per-sequence mean -log π over sampled tokens (FADE's H_t)."""
    per_sequence = []
    for t in trajectories:
        sampled = [-lp for lp, m in zip(t.logprobs, t.loss_mask, strict=True) if m]
        if sampled:
            per_sequence.append(sum(sampled) / len(sampled))
    return sum(per_sequence) / len(per_sequence) if per_sequence else 0.0


def per_turn_token_advantages(
    trajectories: list[Trajectory],
    tensors: dict[str, Any],
    gamma: float,
    preset: Preset,
    fade_state: FadeState | None = None,
) -> Tensor:
    """[N, L] advantage of each agent token's turn: the preset's scheme applied, at each turn index, to the
    discounted return-to-go of the trajectories that reached it (the env's step rewards are the per-turn
    rewards; the last one holds the episode reward). A scheme with state (FADE) scores every turn from
    `fade_state` as it was before this batch, and leaves it unchanged."""
    turns = max((len(t.turn_rewards) for t in trajectories), default=0)
    rewards = torch.zeros(len(trajectories), max(turns, 1), dtype=torch.float64)
    mask = torch.zeros_like(rewards, dtype=torch.bool)
    for i, t in enumerate(trajectories):
        rewards[i, : len(t.turn_rewards)] = torch.tensor(t.turn_rewards, dtype=torch.float64)
        mask[i, : len(t.turn_rewards)] = True
    final = torch.zeros(len(trajectories), dtype=torch.float64)
    groups = tensors["group_ids"]
    returns = turn_returns(rewards, mask, final, groups, gamma=gamma)

    def scheme(rows: Tensor, values: Tensor) -> Tensor:
        state = copy.deepcopy(fade_state) if fade_state is not None else None
        subset = [trajectories[i] for i in rows.tolist()]
        return trajectory_advantages(subset, preset, state, rewards=values)

    per_turn = scheme_turn_advantages(returns, mask, scheme)
    return turn_token_advantages(per_turn, tensors["turn_ids"], tensors["loss_mask"])


def step_tensors(
    trajectories: list[Trajectory],
    preset: Preset,
    pad_token_id: int,
    fade_state: FadeState | None = None,
    turn_credit: str = "broadcast",
    gamma: float = 1.0,
) -> StepTensors:
    """Advantages (advancing `fade_state` for FADE) and padded tensors of the step's episodes."""
    before = copy.deepcopy(fade_state) if turn_credit == "per_turn" else None
    advantages = trajectory_advantages(trajectories, preset, fade_state)
    tensors = collate(trajectories, pad_token_id=pad_token_id)
    if turn_credit == "per_turn":
        token_adv = per_turn_token_advantages(trajectories, tensors, gamma, preset, before)
    else:
        token_adv = advantages
    return StepTensors(tensors, advantages, token_adv)


def needs_stats(preset: Preset, epochs: int, minibatches: int) -> bool:
    """Whether a no-grad pass over the batch must run before the update: to recompute old log-probs (more
    than one optimizer step per batch), for token filters, or for reference log-probs (KL penalty)."""
    return epochs > 1 or minibatches > 1 or bool(preset.filters) or preset.loss.kl_coef != 0


def behaviour_old_logprobs(
    recomputed: Tensor, sampled: Tensor, versions: Tensor, current_version: int
) -> tuple[Tensor, Tensor]:
    """Old log-probs [N, L] for an update that recomputed them at the current weights: rows sampled by an
    earlier policy (`versions` [N] < `current_version`, e.g. dynamic-sampling groups held over from earlier
    steps) keep their sampler log-probs `sampled`, so the ratio measures how far they are off-policy; the
    others take `recomputed`. Returns (old log-probs, [N] bool stale rows)."""
    stale = versions < current_version
    return torch.where(stale[:, None], sampled, recomputed), stale


def policy_minibatch(
    step: StepTensors,
    rows: list[int],
    preset: Preset,
    old_logprobs: Tensor,
    stats: dict[str, Tensor] | None,
    behaviour_logprobs: Tensor | None = None,
) -> tuple[PolicyBatch, FilterResult | None]:
    """The `PolicyBatch` of minibatch `rows`: filters applied with the pass's statistics, denominators built
    over the whole minibatch; `behaviour_logprobs` [N, L] (the sampler's, when `old_logprobs` were
    recomputed) go with it for an off-policy correction."""
    index = torch.tensor(rows, dtype=torch.long)
    t = step.tensors
    mask = t["loss_mask"].index_select(0, index)
    group_ids = t["group_ids"].index_select(0, index)
    adv = step.token_advantages.index_select(0, index).float()
    filtered: FilterResult | None = None
    keep, weights = mask, None
    if preset.filters:
        if stats is None:
            raise ValueError("token filters need the statistics pass")
        inputs = FilterInputs(
            mask, adv, stats["logprobs"][index], stats["entropy"][index], stats["collision"][index], group_ids
        )
        filtered = apply_filters(inputs, preset.filters, renormalize=preset.renormalize)
        keep = filtered.keep.float()
        if not torch.all(filtered.weights[filtered.keep] == 1):
            weights = filtered.weights.float()
    count_mask = filtered.count_mask if filtered is not None else mask
    loss = preset.loss
    normalizer = LossNormalizer.build(
        loss.aggregation, count_mask, group_ids, max_length=loss.max_length, advantages=adv,
        active_groups_only=loss.active_groups_only,
    )  # fmt: skip
    ref = None
    if stats is not None and "ref_logprobs" in stats:
        ref = stats["ref_logprobs"].index_select(0, index)
    batch = PolicyBatch(
        input_ids=t["input_ids"].index_select(0, index),
        attention_mask=t["attention_mask"].index_select(0, index),
        loss_mask=keep,
        old_logprobs=old_logprobs.index_select(0, index),
        advantages=adv,
        group_ids=group_ids,
        normalizer=normalizer,
        token_weights=weights,
        ref_logprobs=ref,
        count_mask=None if filtered is None else count_mask.float(),
        prompt_lengths=t["prompt_lengths"].index_select(0, index),
        behaviour_logprobs=None if behaviour_logprobs is None else behaviour_logprobs.index_select(0, index),
    )
    return batch, filtered


def sft_batch(trajectories: list[Trajectory], pad_token_id: int) -> PolicyBatch:
    """A `PolicyBatch` of kind `sft`: negative log-likelihood of the agent tokens, averaged over them."""
    t = collate(trajectories, pad_token_id=pad_token_id)
    n = len(trajectories)
    normalizer = LossNormalizer.build("token_mean", t["loss_mask"])
    return PolicyBatch(
        input_ids=t["input_ids"], attention_mask=t["attention_mask"], loss_mask=t["loss_mask"],
        old_logprobs=torch.zeros_like(t["loss_mask"]), advantages=torch.zeros(n), group_ids=t["group_ids"],
        normalizer=normalizer, prompt_lengths=t["prompt_lengths"], kind="sft",
    )  # fmt: skip
