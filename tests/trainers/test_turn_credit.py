"""Multi-turn credit: broadcast and per-turn group-normalized return-to-go."""

from __future__ import annotations

import math

import pytest
import torch

from trainers.credit import broadcast_advantages, per_turn_advantages, turn_token_advantages


def test_broadcast_puts_advantage_on_agent_tokens_only() -> None:
    mask = torch.tensor([[0, 1, 1, 0, 1], [0, 0, 1, 1, 0]], dtype=torch.bool)
    out = broadcast_advantages(torch.tensor([0.5, -1.0]), mask)
    assert out.tolist() == [[0, 0.5, 0.5, 0, 0.5], [0, 0, -1.0, -1.0, 0]]


def test_per_turn_return_to_go_normalized_per_turn_index() -> None:
    turn_r = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.5, 0.0, 0.0]])
    turn_mask = torch.tensor([[1, 1, 1], [1, 1, 1], [1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    final = torch.tensor([1.0, 0.0, 1.0, 0.0])
    groups = torch.tensor([7, 7, 7, 3])
    gamma = 0.5
    adv = per_turn_advantages(turn_r, turn_mask, final, groups, gamma=gamma, eps=0.0)
    # returns of group 7 (final reward added on each trajectory's last turn)
    rets = {
        0: [1 + gamma * (0 + gamma * 2), 0 + gamma * 2, 2.0],
        1: [0 + gamma * 1, 1.0, 0.0],
        2: [1 + gamma * 2, 2.0],
    }
    for k in range(3):
        col = [(i, rets[i][k]) for i in range(3) if k < len(rets[i])]
        vals = torch.tensor([v for _, v in col], dtype=torch.float64)
        want = (vals - vals.mean()) / vals.std(unbiased=False)
        got = torch.stack([adv[i, k] for i, _ in col])
        torch.testing.assert_close(got, want)
    assert adv[3].tolist() == [0.0, 0.0, 0.0]  # a group of one
    assert adv[2, 2] == 0.0  # padding


def test_per_turn_nan_names_trajectory() -> None:
    with pytest.raises(ValueError, match=r"trajectory 1 \(group id 4\)"):
        per_turn_advantages(
            torch.tensor([[1.0], [math.nan]]),
            torch.ones(2, 1, dtype=torch.bool),
            torch.zeros(2),
            torch.tensor([4, 4]),
        )


def test_turn_token_advantages_follow_turn_ids() -> None:
    turn_adv = torch.tensor([[0.5, -0.5], [1.0, 2.0]], dtype=torch.float64)
    turn_ids = torch.tensor([[-1, 0, 0, 1, 1], [-1, -1, 0, 1, 1]])
    mask = torch.tensor([[0, 1, 0, 1, 1], [0, 0, 1, 1, 0]], dtype=torch.bool)
    out = turn_token_advantages(turn_adv, turn_ids, mask)
    assert out.tolist() == [[0, 0.5, 0, -0.5, -0.5], [0, 0, 1.0, 2.0, 0]]
