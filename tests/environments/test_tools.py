"""Tool-env base, the calculator's safe evaluator and the sandboxed Python tool."""

from __future__ import annotations

import sys
import time

import gymnasium as gym
import numpy as np
import pytest

import environments  # noqa: F401
from agentrl.core.types import Task
from environments.calculator import safe_eval
from environments.python_tool import run_python
from environments.tools import Tool, ToolArgumentError, ToolEnv, parse_call, tool

THINK = "<think>Work it out.</think>"
TASK = Task(id="c", question="What is 6 * 7?", answers=["42"])


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("7 / 2", 3.5),
        ("7 // 2", 3),
        ("-3 ** 2", -9),
        ("2 ^ 10", 1024),
        ("sqrt(16)", 4.0),
        ("max(1, 5, 2)", 5),
        ("10 % 4", 2),
        ("3 × 4 ÷ 2", 6.0),
    ],
)
def test_safe_eval(expression: str, value: float) -> None:
    assert safe_eval(expression) == value


@pytest.mark.parametrize(
    "expression",
    [
        "__import__('os')",
        "open('x')",
        "a + 1",
        "[1, 2]",
        "2 ** 1000",
        "1 / 0",
        "lambda: 1",
        "(1).real",
        "x" * 600,
        "9 ** 9 ** 9",
        "True + 1",
        "'a' * 3",
    ],
)
def test_safe_eval_rejects(expression: str) -> None:
    with pytest.raises(ValueError):
        safe_eval(expression)


def make_calc(**kwargs: object) -> gym.Env[str, str]:
    env = gym.make("agentrl/Calculator-v0", **kwargs)
    env.reset(seed=0, options={"task": TASK})
    return env


def test_calculator_episode() -> None:
    env = make_calc()
    assert env.unwrapped.stop_strings == ["</tool>", "</answer>"]
    assert env.unwrapped.observation_role == "tool"
    obs, reward, terminated, _truncated, info = env.step(f"{THINK}<tool>calculator: 6 * 7</tool>")
    assert (obs, reward, terminated, info["tool_calls"], info["action_type"]) == (
        "<result>42</result>",
        0.0,
        False,
        1,
        "tool",
    )
    obs, *_ = env.step(f'{THINK}<tool>{{"name": "calculator", "arguments": {{"expression": "6*7"}}}}</tool>')
    assert obs == "<result>42</result>"
    _, reward, terminated, _, info = env.step(f"{THINK}<answer>\\boxed{{42}}</answer>")
    assert terminated and reward == 1.0 and info["episode"]["num_tool_calls"] == 2


@pytest.mark.parametrize(
    ("action", "fragment"),
    [
        (f"{THINK}<tool>calculator: os.system('ls')</tool>", "ValueError"),
        (f'{THINK}<tool>{{"name": "search", "arguments": {{}}}}</tool>', "unknown tool 'search'"),
        (f"{THINK}<tool>{{bad json</tool>", "invalid JSON call"),
        (f'{THINK}<tool>{{"name": "calculator", "arguments": {{"nope": 1}}}}</tool>', "TypeError"),
    ],
)
def test_tool_errors_are_observations(action: str, fragment: str) -> None:
    env = make_calc()
    obs, _reward, terminated, truncated, info = env.step(action)
    assert obs.startswith("<result>Error:") and fragment in obs and fragment in info["error"]
    assert not terminated and not truncated
    *_, info = env.step(f"{THINK}<answer>42</answer>")
    assert info["episode"]["tool_errors"] == 1


def test_invalid_turns_and_budget() -> None:
    env = make_calc(max_turns=2)
    obs, _, _, _, info = env.step("just text")
    assert info["action_type"] == "invalid" and obs.startswith("Invalid turn")
    obs, reward, terminated, truncated, info = env.step(f"{THINK}<tool>calculator: 1+1</tool>")
    assert (obs, reward, terminated, truncated) == ("", 0.0, False, True)
    assert info["episode"]["finish_reason"] == "max_turns"
    with pytest.raises(TypeError, match="str"):
        make_calc().step(42)  # type: ignore[arg-type]


def test_format_weight() -> None:
    env = make_calc(format_weight=0.3)
    assert env.step("<answer>42</answer>")[1] == pytest.approx(1 / 1.3)


def test_parse_call_variants() -> None:
    @tool()
    def echo(text: str) -> str:
        """Echo the text."""
        return text

    @tool(parse=lambda raw: {"a": int(raw.split(",")[0]), "b": int(raw.split(",")[1])})
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    assert echo.description == "Echo the text."
    assert parse_call("add: 2, 3", [echo, add]) == (add, {"a": 2, "b": 3})
    assert parse_call('{"name": "echo", "arguments": "hi"}', [echo, add]) == (echo, {"text": "hi"})
    assert parse_call("hello: world", [echo]) == (echo, {"text": "hello: world"})
    with pytest.raises(ToolArgumentError, match="available: echo, add"):
        parse_call("hello", [echo, add])


class SlowEnv(ToolEnv):
    tools = (Tool("wait", lambda seconds: time.sleep(float(seconds)) or "done", "sleeps", timeout=0.2),)

    def default_task(self, rng: np.random.Generator) -> Task:
        return TASK


def test_tool_timeout() -> None:
    env = SlowEnv()
    env.reset(seed=0)
    start = time.perf_counter()
    obs, *_, _info = env.step(f"{THINK}<tool>wait: 3</tool>")
    assert time.perf_counter() - start < 1.5 and "TimeoutError" in obs


def test_tool_env_without_tools() -> None:
    class Empty(ToolEnv):
        pass

    with pytest.raises(TypeError, match="no tools"):
        Empty()


@pytest.mark.skipif(sys.platform != "linux", reason="resource limits are POSIX")
def test_python_sandbox() -> None:
    assert run_python("print(sum(range(10)))") == "45"
    assert "ZeroDivisionError" in run_python("1/0")
    assert "MemoryError" in run_python("x = bytearray(2 * 1024**3)", memory_bytes=256 * 1024**2)
    with pytest.raises(TimeoutError):
        run_python("while True: pass", timeout=0.5)
    assert "No such file" in run_python("open('/nonexistent/x')") or "Error" in run_python(
        "open('/nonexistent/x')"
    )


def test_python_tool_env() -> None:
    env = gym.make("agentrl/PythonTool-v0")
    env.reset(options={"task": Task(id="p", question="Sum 1..10?", answers=["55"])})
    obs, *_ = env.step(f"{THINK}<tool>python: print(sum(range(1, 11)))</tool>")
    assert obs == "<result>55</result>"
    assert env.step(f"{THINK}<answer>55</answer>")[1] == 1.0
