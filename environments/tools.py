"""A small base for tool-using environments: tools are plain functions, the base does the protocol.

Protocol: each turn is `<think> ... </think>` followed by exactly one of

- a tag call: `<tool> name: arguments </tool>` (with a single tool, `<tool> arguments </tool>` also works),
- a JSON call: `<tool> {"name": "calculator", "arguments": {"expression": "2 + 3"}} </tool>`,
- the final answer: `<answer> ... </answer>`, which ends the episode.

The environment runs the tool and returns `<result> ... </result>`. Unknown tools, bad arguments, tools that
raise or overrun their timeout return an error result and the episode goes on; other turns get a corrective
message. Parsing rules (first action wins, nesting, unclosed tags) are those of `environments.parsing`.

A new environment subclasses `ToolEnv`, lists its `tools` and implements `default_task` (and `score_answer`
if the default, math equivalence or QA exact match against `task.answers`, does not fit).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from agentrl.core.types import Task
from environments.base import Message, StepResult, TextEnv
from environments.math_answers import math_equal
from environments.observations import truncate, wrap
from environments.parsing import parse_turn
from environments.rewards import qa_em, qa_reward
from environments.timeouts import call_with_timeout

ArgParser = Callable[[str], dict[str, Any]]

TOOL_SYSTEM_PROMPT = """You solve tasks step by step and may call tools.

In every response, first reason inside <think> and </think>. Then either call one tool by writing \
<tool> tool_name: arguments </tool> (or <tool> {{"name": "tool_name", "arguments": {{...}}}} </tool>), \
whose output comes back between <result> and </result>, or give the final answer inside <answer> and \
</answer>.

Available tools:
{tools}"""
INVALID_TOOL_TURN = (
    "Invalid turn: {error}. Reason inside <think>...</think>, then call a tool with "
    "<tool> name: arguments </tool> or answer with <answer> answer </answer>."
)


class ToolArgumentError(ValueError):
    """The arguments of a tool call could not be parsed."""


@dataclass(frozen=True)
class Tool:
    """A callable the agent may use.

    Attributes:
        name: what the agent writes to call it.
        fn: the function; called with keyword arguments.
        description: one line shown in the system prompt.
        parse: turns the raw argument text of a tag call into keyword arguments (default: the whole text as
            the function's first parameter).
        timeout: seconds before the call is abandoned (None: no limit).
    """

    name: str
    fn: Callable[..., Any]
    description: str
    parse: ArgParser | None = None
    timeout: float | None = 10.0

    def arguments(self, raw: str) -> dict[str, Any]:
        if self.parse is not None:
            return self.parse(raw)
        params = list(inspect.signature(self.fn).parameters)
        return {params[0]: raw} if params else {}


def tool(
    name: str | None = None,
    description: str | None = None,
    parse: ArgParser | None = None,
    timeout: float | None = 10.0,
) -> Callable[[Callable[..., Any]], Tool]:
    """Decorator making a `Tool` of a function; the description defaults to the docstring's first line."""

    def decorator(fn: Callable[..., Any]) -> Tool:
        doc = (fn.__doc__ or "").strip().splitlines()
        return Tool(name or fn.__name__, fn, description or (doc[0] if doc else fn.__name__), parse, timeout)

    return decorator


def parse_call(body: str, tools: Sequence[Tool]) -> tuple[Tool, dict[str, Any]]:
    """Resolve a tool call body (JSON or `name: arguments`) to a tool and its keyword arguments."""
    by_name = {t.name: t for t in tools}
    if body.startswith("{"):
        try:
            call = json.loads(body)
        except json.JSONDecodeError as exc:
            raise ToolArgumentError(f"invalid JSON call ({exc.msg})") from None
        if not isinstance(call, dict) or "name" not in call:
            raise ToolArgumentError('a JSON call needs {"name": ..., "arguments": {...}}')
        target = by_name.get(str(call["name"]))
        if target is None:
            raise ToolArgumentError(f"unknown tool {call['name']!r}; available: {', '.join(by_name)}")
        arguments = call.get("arguments", {})
        if isinstance(arguments, str):
            return target, target.arguments(arguments)
        if not isinstance(arguments, dict):
            raise ToolArgumentError("'arguments' must be an object or a string")
        return target, arguments
    name, sep, rest = body.partition(":")
    if sep and name.strip() in by_name:
        target = by_name[name.strip()]
        return target, target.arguments(rest.strip())
    if len(tools) == 1:
        return tools[0], tools[0].arguments(body)
    raise ToolArgumentError(f"name the tool as 'name: arguments'; available: {', '.join(by_name)}")


class ToolEnv(TextEnv):
    """Multi-turn environment around a list of tools.

    Args:
        max_turns: agent turns before truncation.
        format_weight: w in (w * R_fmt + score) / (1 + w); 0 (default) makes the reward the answer score.
        max_obs_chars: character budget of one tool result.
        system_prompt: overrides the generated prompt (which lists the tools).
        observation_role: chat role of tool results in message mode (default "tool").
    """

    tools: Sequence[Tool] = ()

    def __init__(
        self,
        max_turns: int = 8,
        format_weight: float = 0.0,
        max_obs_chars: int = 2000,
        system_prompt: str | None = None,
        observation_role: str = "tool",
        render_mode: str | None = None,
    ) -> None:
        super().__init__(render_mode=render_mode, observation_role=observation_role)
        if not self.tools:
            raise TypeError(f"{type(self).__name__} declares no tools")
        self.stop_strings = ["</tool>", "</answer>"]
        self.max_turns, self.format_weight, self.max_obs_chars = max_turns, format_weight, max_obs_chars
        listing = "\n".join(f"- {t.name}: {t.description}" for t in self.tools)
        self.system_prompt = (
            system_prompt if system_prompt is not None else TOOL_SYSTEM_PROMPT.format(tools=listing)
        )

    def initial_messages(self, task: Task) -> list[Message]:
        return [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": task.question}]

    def score_answer(self, answer: str, task: Task) -> float:
        """Score of a final answer: math equivalence or QA exact match against any gold answer."""
        if any(math_equal(answer, gold, "math") for gold in task.answers):
            return 1.0
        return qa_em(answer, task.answers)

    def start(self, task: Task) -> None:
        self.turn_formats: list[bool] = []
        self.num_calls = 0
        self.invalid_turns = 0
        self.tool_errors = 0

    def turn(self, action: str) -> StepResult:
        parsed = parse_turn(action, ("tool", "answer"))
        self.turn_formats.append(parsed.format_ok)
        info = parsed.step_info()
        if parsed.action == "answer":
            assert parsed.content is not None
            return self._finish(parsed.content, info)
        if parsed.action == "tool":
            assert parsed.content is not None
            observation = wrap("result", self._call(parsed.content, info))
        else:
            self.invalid_turns += 1
            observation = INVALID_TOOL_TURN.format(error=parsed.error)
        if self.num_turns >= self.max_turns:
            return self._finish(None, info)
        return observation, 0.0, False, False, info

    def _call(self, body: str, info: dict[str, Any]) -> str:
        self.num_calls += 1
        info["tool_calls"] = 1
        try:
            target, kwargs = parse_call(body, self.tools)
            info["tool"] = target.name
            result = call_with_timeout(lambda: target.fn(**kwargs), timeout=target.timeout)
        except Exception as exc:
            self.tool_errors += 1
            info["error"] = f"{type(exc).__name__}: {exc}"
            return f"Error: {info['error']}"
        text, _ = truncate(str(result), self.max_obs_chars)
        return text

    def _finish(self, answer: str | None, info: dict[str, Any]) -> StepResult:
        assert self.task is not None
        score = self.score_answer(answer, self.task) if answer is not None else 0.0
        format_ok = answer is not None and all(self.turn_formats)
        reward = qa_reward(score, format_ok, self.format_weight)
        info["episode"] = {
            "reward": reward,
            "format_ok": format_ok,
            "score": score,
            "answer": answer,
            "num_turns": self.num_turns,
            "num_tool_calls": self.num_calls,
            "invalid_turns": self.invalid_turns,
            "tool_errors": self.tool_errors,
            "finish_reason": "answer" if answer is not None else "max_turns",
        }
        terminated = answer is not None
        return "", reward, terminated, not terminated, info
