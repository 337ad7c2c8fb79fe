"""Sandboxed Python tool environment: the agent runs short programs to compute answers.

Each call runs `python -I -c code` in a fresh subprocess with a wall-clock timeout, CPU-time and address-space
limits (`resource.setrlimit`, POSIX only), an empty environment and a temporary working directory; stdout and
stderr come back cut to a budget. This isolates crashes and runaway loops, not a determined attacker: run
untrusted code in a container as well.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import numpy as np

from agentrl.types import Task
from environments.tools import Tool, ToolEnv

DEFAULT_TIMEOUT = 5.0
DEFAULT_MEMORY_BYTES = 512 * 1024 * 1024


def run_python(code: str, timeout: float = DEFAULT_TIMEOUT, memory_bytes: int = DEFAULT_MEMORY_BYTES) -> str:
    """Run `code` in a limited subprocess and return its output (stdout, plus stderr when it failed).

    Raises TimeoutError when the program overruns `timeout`; the environment reports that to the agent.
    """

    def limit() -> None:
        import resource

        cpu = max(1, int(timeout) + 1)
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))

    with tempfile.TemporaryDirectory(prefix="agentrl-py-") as workdir:
        try:
            proc = subprocess.run(
                [sys.executable, "-I", "-c", code],
                capture_output=True,
                text=True,
                timeout=timeout,
                cwd=workdir,
                env={"PATH": os.environ.get("PATH", "")},
                preexec_fn=limit if os.name == "posix" else None,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"the program ran longer than {timeout:g} s") from None
    output = proc.stdout + (proc.stderr if proc.returncode else "")
    return output.strip() or f"(no output, exit code {proc.returncode})"


PYTHON_TOOL = Tool(
    name="python",
    fn=run_python,
    description="runs a short Python program and returns what it prints, e.g. python: print(sum(range(10)))",
    parse=lambda raw: {"code": raw},
    timeout=DEFAULT_TIMEOUT + 5.0,
)


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
    """Programming-friendly arithmetic problems with a sandboxed Python tool."""

    tools: tuple[Tool, ...] = (PYTHON_TOOL,)

    def default_task(self, rng: np.random.Generator) -> Task:
        return python_task(rng)
