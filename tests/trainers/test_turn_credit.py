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


def multi_turn_episodes() -> list:
    """Two groups of four episodes with 1-3 agent turns, per-turn rewards and final rewards in the last."""
    from agentrl.core.types import Trajectory

    turn_rewards = [
        [0.1, 1.0], [0.1, 0.1, 0.0], [0.0, 1.0], [0.1],
        [0.1, 0.1, 1.0], [0.0, 0.0], [0.1, 0.1, 0.0], [0.1, 1.0],
    ]  # fmt: skip
    episodes = []
    for i, rewards in enumerate(turn_rewards):
        ids, mask, turns = [1, 2, 3], [0, 0, 0], [-1, -1, -1]
        for k in range(len(rewards)):
            ids += [4 + k, 5 + k, 6, 7]
            mask += [1, 1, 0, 0]
            turns += [k, k, k, k]
        episodes.append(Trajectory(
            task_id=f"t{i // 4}", group_id=i // 4, token_ids=ids, loss_mask=mask, turn_ids=turns,
            logprobs=[-1.0 * m for m in mask], prompt_length=3, reward=rewards[-1], turn_rewards=rewards,
            num_turns=len(rewards), finish_reason="answer",
        ))  # fmt: skip
    return episodes


def test_per_turn_credit_keeps_a_negative_only_scheme_negative() -> None:
    from agentrl.train.step_batch import step_tensors
    from trainers.presets import get_preset

    episodes = multi_turn_episodes()
    st = step_tensors(episodes, get_preset("grpo_n"), 0, turn_credit="per_turn")
    agent = st.tensors["loss_mask"].bool()
    assert (st.token_advantages[agent] <= 0).all()
    assert (st.token_advantages[agent] < 0).any()
    assert (st.token_advantages[~agent] == 0).all()


def test_per_turn_credit_with_grpo_is_the_group_normalised_return() -> None:
    from agentrl.train.step_batch import step_tensors
    from trainers.presets import get_preset

    episodes = multi_turn_episodes()
    st = step_tensors(episodes, get_preset("grpo"), 0, turn_credit="per_turn", gamma=0.9)
    k = max(len(e.turn_rewards) for e in episodes)
    rewards = torch.zeros(len(episodes), k, dtype=torch.float64)
    mask = torch.zeros(len(episodes), k, dtype=torch.bool)
    for i, e in enumerate(episodes):
        rewards[i, : len(e.turn_rewards)] = torch.tensor(e.turn_rewards, dtype=torch.float64)
        mask[i, : len(e.turn_rewards)] = True
    groups = st.tensors["group_ids"]
    expected = per_turn_advantages(rewards, mask, torch.zeros(len(episodes)), groups, gamma=0.9)
    tokens = turn_token_advantages(expected, st.tensors["turn_ids"], st.tensors["loss_mask"])
    torch.testing.assert_close(st.token_advantages, tokens)


def test_per_turn_credit_advances_a_scheme_state_once_per_batch() -> None:
    from agentrl.train.step_batch import step_tensors
    from trainers.advantages import FadeState
    from trainers.presets import get_preset

    broadcast, per_turn = FadeState(), FadeState()
    step_tensors(multi_turn_episodes(), get_preset("fade"), 0, fade_state=broadcast)
    step_tensors(multi_turn_episodes(), get_preset("fade"), 0, fade_state=per_turn, turn_credit="per_turn")
    assert per_turn.to_dict() == broadcast.to_dict()
