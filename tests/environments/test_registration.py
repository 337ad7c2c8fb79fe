"""Every registered id: created with no arguments, passes check_env, and follows the info contract."""

from __future__ import annotations

import json

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

import environments
from environments.base import TextSpace

IDS = environments.ENVIRONMENTS.names()


def test_expected_ids() -> None:
    assert {
        "agentrl/Math-v0",
        "agentrl/SearchQA-v0",
        "agentrl/Calculator-v0",
        "agentrl/PythonTool-v0",
    } <= set(IDS)
    assert all(env_id in gym.registry for env_id in IDS)
    with pytest.raises(KeyError, match="agentrl/Math-v0"):
        environments.ENVIRONMENTS.get("agentrl/Maths-v0")


@pytest.mark.parametrize("env_id", IDS)
def test_check_env(env_id: str) -> None:
    env = gym.make(env_id)
    check_env(env.unwrapped)
    env.close()


@pytest.mark.parametrize("env_id", IDS)
def test_step_info_contract(env_id: str) -> None:
    env = gym.make(env_id)
    obs, info = env.reset(seed=0)
    assert obs == info["messages"][-1]["content"]
    assert all(set(m) == {"role", "content"} for m in info["messages"])
    assert isinstance(env.unwrapped.stop_strings, list) and isinstance(env.unwrapped.observation_role, str)
    json.dumps(info)
    for action in ["<think>x</think> no action", "<think>x</think><answer>1</answer>"]:
        obs, reward, terminated, truncated, info = env.step(action)
        json.dumps(info)
        for key, kind in [("turn_format_ok", bool), ("action_type", str), ("tool_calls", int)]:
            assert isinstance(info[key], kind)
        assert info["action_type"] in {"search", "answer", "tool", "invalid"}
        assert "gold_in_observation" in info and "error" in info
        if terminated or truncated:
            assert obs == "" and {"reward", "format_ok"} <= set(info["episode"])
            assert info["episode"]["reward"] == reward
            break
        assert reward == 0.0


def test_text_space_accepts_any_string() -> None:
    space = TextSpace(max_length=10)
    assert space.contains("é\x00中 ∑") and not space.contains("x" * 11) and not space.contains(b"x")
    assert all(space.contains(space.sample()) for _ in range(20))
