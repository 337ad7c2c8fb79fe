"""The tool-env tutorial's code runs as written: each code block on its own, the first saved as the module
`weather_env` that the others reach through the `weather_env:tutorial/Weather-v0` id."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

TUTORIAL = Path(__file__).resolve().parents[2] / "docs" / "tool_env_tutorial.md"
ENV_ID = "tutorial/Weather-v0"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", TUTORIAL.read_text(encoding="utf-8"), re.DOTALL)


@pytest.fixture
def weather_module(tmp_path, monkeypatch) -> Iterator[str]:
    """The tutorial's first block saved as `weather_env.py` on sys.path; unregistered again afterwards."""
    (tmp_path / "weather_env.py").write_text(_blocks()[0], encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "weather_env", raising=False)
    gym.registry.pop(ENV_ID, None)
    yield "weather_env"
    sys.modules.pop("weather_env", None)
    gym.registry.pop(ENV_ID, None)


def test_the_env_module_is_short_and_registers_the_id() -> None:
    env_code = _blocks()[0]
    assert len(env_code.strip().splitlines()) <= 60
    gym.registry.pop(ENV_ID, None)
    try:
        exec(compile(env_code, f"{TUTORIAL}:block-0", "exec"), {"__name__": "weather_env"})
        env = gym.make(ENV_ID)
        check_env(env.unwrapped)
        obs, _info = env.reset(seed=4)
        assert "warmer" in obs and env.unwrapped.observation_role == "tool"
    finally:
        gym.registry.pop(ENV_ID, None)


@pytest.mark.parametrize("index", [1, 2])
def test_each_usage_block_runs_on_its_own(weather_module: str, index: int) -> None:
    blocks = _blocks()
    assert len(blocks) == 3
    assert f"{weather_module}:{ENV_ID}" in blocks[index]
    exec(compile(blocks[index], f"{TUTORIAL}:block-{index}", "exec"), {"__name__": f"tutorial_block_{index}"})
