"""A tiny environment for trainer tests: one turn, a reward any random policy gets partly right.

The reward is the fraction of vowels among the letters of the response, rounded to quarters, so groups of a
random tiny model's samples sometimes differ (signal) and sometimes tie (dynamic sampling drops them). A
response containing the env's `crash_marker` raises inside `step`.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np

from agentrl.core.types import Task
from environments.base import Message, StepResult, TextEnv

ENV_ID = "tests/Vowels-v0"


class VowelEnv(TextEnv):
    def __init__(self, crash_marker: str | None = None, num_tasks: int = 64, render_mode: str | None = None):
        super().__init__(render_mode=render_mode)
        self.crash_marker = crash_marker
        self.num_tasks = num_tasks

    def default_task(self, rng: np.random.Generator) -> Task:
        k = int(rng.integers(self.num_tasks))
        return Task(id=f"vowels-{k}", question=f"Write word number {k}.", dataset="vowels")

    def initial_messages(self, task: Task) -> list[Message]:
        return [{"role": "user", "content": task.question}]

    def turn(self, action: str) -> StepResult:
        if self.crash_marker and self.crash_marker in action:
            raise RuntimeError("the test env crashed on purpose")
        letters = [c for c in action.lower() if c.isalpha()]
        share = sum(c in "aeiou" for c in letters) / len(letters) if letters else 0.0
        reward = round(share * 4) / 4
        info: dict[str, Any] = {
            "turn_format_ok": True,
            "action_type": "answer",
            "tool_calls": 0,
            "gold_in_observation": None,
            "error": None,
            "episode": {"reward": reward, "format_ok": True, "score": reward},
        }
        return "", reward, True, False, info


if ENV_ID not in gymnasium.registry:
    gymnasium.register(ENV_ID, entry_point=VowelEnv)
