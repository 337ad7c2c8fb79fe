"""Padded tensors for the trainer from a list of trajectories (right padding)."""

from __future__ import annotations

from typing import Any

from agentrl.core.types import Trajectory


def collate(
    trajectories: list[Trajectory], pad_token_id: int = 0, max_length: int | None = None
) -> dict[str, Any]:
    """Stack B trajectories into right-padded tensors of length L = the longest (or `max_length`, cutting).

    Returns:
        input_ids: [B, L] long, `pad_token_id` after each episode's end.
        attention_mask: [B, L] long, 1 on real tokens.
        loss_mask: [B, L] float, 1 on sampled tokens.
        old_logprobs: [B, L] float; old_logprobs[b, i] is the sampling log-prob of input_ids[b, i] (drawn from
            the logits at position i - 1), 0 where loss_mask is 0.
        turn_ids: [B, L] long, -1 on prompt and padding.
        rewards: [B] float.
        group_ids: [B] long.
        prompt_lengths: [B] long.
        lengths: [B] long, unpadded lengths (after cutting).
    """
    import torch

    if not trajectories:
        raise ValueError("collate needs at least one trajectory")
    longest = max(len(t.token_ids) for t in trajectories)
    length = longest if max_length is None else min(longest, max_length)
    b = len(trajectories)
    input_ids = torch.full((b, length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros(b, length, dtype=torch.long)
    loss_mask = torch.zeros(b, length, dtype=torch.float32)
    old_logprobs = torch.zeros(b, length, dtype=torch.float32)
    turn_ids = torch.full((b, length), -1, dtype=torch.long)
    lengths = torch.zeros(b, dtype=torch.long)
    for i, t in enumerate(trajectories):
        n = min(len(t.token_ids), length)
        lengths[i] = n
        input_ids[i, :n] = torch.tensor(t.token_ids[:n], dtype=torch.long)
        attention_mask[i, :n] = 1
        loss_mask[i, :n] = torch.tensor(t.loss_mask[:n], dtype=torch.float32)
        old_logprobs[i, :n] = torch.tensor(t.logprobs[:n], dtype=torch.float32)
        turn_ids[i, :n] = torch.tensor(t.turn_ids[:n], dtype=torch.long)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "loss_mask": loss_mask,
        "old_logprobs": old_logprobs,
        "turn_ids": turn_ids,
        "rewards": torch.tensor([t.reward for t in trajectories], dtype=torch.float32),
        "group_ids": torch.tensor([t.group_id for t in trajectories], dtype=torch.long),
        "prompt_lengths": torch.tensor([t.prompt_length for t in trajectories], dtype=torch.long),
        "lengths": lengths,
    }
