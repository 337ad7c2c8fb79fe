"""The tool-env tutorial's code runs as written, through gymnasium.make and check_env."""

from __future__ import annotations

import re
from pathlib import Path

import gymnasium as gym
from gymnasium.utils.env_checker import check_env

TUTORIAL = Path(__file__).resolve().parents[2] / "docs" / "tool_env_tutorial.md"


def test_tutorial_code_runs() -> None:
    blocks = re.findall(r"```python\n(.*?)```", TUTORIAL.read_text(encoding="utf-8"), re.DOTALL)
    assert len(blocks) == 2
    env_code = blocks[0]
    assert len(env_code.strip().splitlines()) <= 60
    namespace: dict[str, object] = {"__name__": "tutorial_weather"}
    exec(compile("\n".join(blocks), str(TUTORIAL), "exec"), namespace)
    env = gym.make("tutorial/Weather-v0")
    check_env(env.unwrapped)
    obs, _info = env.reset(seed=4)
    assert "warmer" in obs and env.unwrapped.observation_role == "tool"
