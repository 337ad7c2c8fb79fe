"""A tiny environment registered by this (non-agentrl) module, whose steps can kill their process, hang or
hold the GIL: the executor fault tests.

Importing the module registers `agentrl_test/Probe-v0` with a class entry point, the way a user registers an
env in their own code. A step's action decides what happens:
- contains `<die/>`: the process is killed with SIGKILL (a segfaulting or OOM-killed tool);
- contains `<hang/>`: the step blocks until `RELEASE` is set (a tool that never returns);
- contains `<spin/>`: the step runs C code that holds the GIL for minutes;
- otherwise the episode ends with reward 1.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any, ClassVar

import gymnasium

from agentrl.core.types import Task

PROBE_ID = "agentrl_test/Probe-v0"
RELEASE = threading.Event()


class ProbeEnv(gymnasium.Env):
    """One-step episodes: the task's question is the observation, any ordinary action answers it."""

    stop_strings: ClassVar[list[str]] = ["</answer>"]
    observation_role = "user"

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict]:
        super().reset(seed=seed)
        task = (options or {}).get("task") or Task(id="probe", question="ping?")
        messages = [{"role": "system", "content": "Answer."}, {"role": "user", "content": task.question}]
        return task.question, {"messages": messages}

    def step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        if "<die/>" in action:
            os.kill(os.getpid(), signal.SIGKILL)
        if "<hang/>" in action:
            RELEASE.wait(120)
        if "<spin/>" in action:
            sum(range(10**12))
        return "", 1.0, True, False, {}


gymnasium.register(id=PROBE_ID, entry_point=ProbeEnv, disable_env_checker=True)
