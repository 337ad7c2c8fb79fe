"""Python tool environment: the agent runs short programs in a sandbox to compute answers.

Programs run through `environments.sandbox.Sandbox`: a fresh subprocess with resource limits, caps on the
processes, memory and disk use of the whole program, a clean environment, a temporary working directory,
capped output and, where the machine allows, namespace, Landlock, seccomp and unprivileged-user isolation
(see that module and docs/environments.md for what is and is not isolated). The limits come from the
environment's constructor only: a call whose arguments name anything besides `code` (say `timeout` or
`memory_bytes`) is rejected with an error result.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from agentrl.core.types import Task
from environments.sandbox import Sandbox, SandboxLimits
from environments.tools import Tool, ToolArgumentError, ToolEnv

DEFAULT_TIMEOUT = SandboxLimits.timeout
DEFAULT_MEMORY_BYTES = SandboxLimits.memory_bytes
TOOL_TIMEOUT_MARGIN = 5.0


def run_python(code: str, timeout: float = DEFAULT_TIMEOUT, memory_bytes: int = DEFAULT_MEMORY_BYTES) -> str:
    """Run `code` in the sandbox with the caller's limits; return stdout (plus stderr when it failed).

    For trusted callers: the tool environment never passes the agent's arguments here. Raises TimeoutError
    when the program overruns `timeout`.
    """
    result = Sandbox(SandboxLimits(timeout=timeout, memory_bytes=memory_bytes)).run(code)
    if result.timed_out:
        raise TimeoutError(f"the program ran longer than {timeout:g} s")
    return result.text


def python_tool(sandbox: Sandbox) -> Tool:
    """The `python` tool bound to `sandbox`: its only argument is `code`; limits are the sandbox's."""

    def python(code: str, **overrides: Any) -> str:
        if overrides:
            names = ", ".join(repr(name) for name in sorted(overrides))
            raise ToolArgumentError(
                f"the python tool takes only 'code'; {names} cannot be set by a call "
                "(time, memory and output limits come from the environment's configuration)"
            )
        if not isinstance(code, str):
            raise ToolArgumentError(f"'code' must be a string, got {type(code).__name__}")
        result = sandbox.run(code)
        if result.timed_out:
            raise TimeoutError(f"the program ran longer than {sandbox.limits.timeout:g} s")
        return result.text

    return Tool(
        name="python",
        fn=python,
        description=(
            "runs a short Python program and returns what it prints, e.g. python: print(sum(range(10)))"
        ),
        parse=lambda raw: {"code": raw},
        timeout=sandbox.limits.timeout + TOOL_TIMEOUT_MARGIN,
    )


PYTHON_TOOL = python_tool(Sandbox())


def python_task(rng: np.random.Generator) -> Task:
    """A counting problem that is easy to program and tedious by hand."""
    n = int(rng.integers(50, 500))
    k = int(rng.integers(3, 12))
    answer = sum(i * i for i in range(1, n + 1) if i % k == 0)
    return Task(
        id=f"py-{n}-{k}",
        question=f"What is the sum of the squares of all integers from 1 to {n} that are divisible by {k}?",
        answers=[str(answer)],
        dataset="python",
    )


class PythonToolEnv(ToolEnv):
    """Programming-friendly arithmetic problems with a sandboxed Python tool.

    Args:
        timeout, memory_bytes, max_output_bytes, max_file_bytes, max_processes, max_disk_bytes, max_files:
            the sandbox's limits (see `environments.sandbox.SandboxLimits`); the agent cannot change them.
        isolation: `"auto"` (every isolation layer this machine supports), `"none"`, or a list of layers
            that must be available (see `environments.sandbox.Sandbox`).
        **kwargs: the `ToolEnv` options (max_turns, format_weight, max_obs_chars, ...).

    Every step that calls the tool records the isolation in force in `info["sandbox"]`, e.g.
    `"rlimits+namespaces+landlock"`.
    """

    def __init__(
        self,
        timeout: float = DEFAULT_TIMEOUT,
        memory_bytes: int = DEFAULT_MEMORY_BYTES,
        max_output_bytes: int = SandboxLimits.max_output_bytes,
        max_file_bytes: int = SandboxLimits.max_file_bytes,
        max_processes: int = SandboxLimits.max_processes,
        max_disk_bytes: int = SandboxLimits.max_disk_bytes,
        max_files: int = SandboxLimits.max_files,
        isolation: str | list[str] = "auto",
        **kwargs: Any,
    ) -> None:
        limits = SandboxLimits(
            timeout=timeout,
            memory_bytes=memory_bytes,
            max_output_bytes=max_output_bytes,
            max_file_bytes=max_file_bytes,
            max_processes=max_processes,
            max_disk_bytes=max_disk_bytes,
            max_files=max_files,
        )
        self.sandbox = Sandbox(limits, isolation=isolation)
        self.tools = (python_tool(self.sandbox),)
        super().__init__(**kwargs)

    def default_task(self, rng: np.random.Generator) -> Task:
        return python_task(rng)

    def _call(self, body: str, info: dict[str, Any]) -> str:
        observation = super()._call(body, info)
        if info.get("tool") == "python":
            info["sandbox"] = "+".join(self.sandbox.isolation)
        return observation
