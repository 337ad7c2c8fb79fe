"""The text-environment contract every agentrl environment follows, and the base class that implements it.

Contract (the rollout engine relies on exactly this)::

    env = gymnasium.make("agentrl/SearchQA-v0", **kwargs)     # every id also works with no kwargs at all
    obs, info = env.reset(seed=s, options={"task": task})     # Task, or a dict with Task fields
    info["messages"]    # [{"role", "content"}]: system message (if any) + user message(s) to render
    obs == info["messages"][-1]["content"]
    env.unwrapped.stop_strings      # strings that end an agent turn, e.g. ["</search>", "</answer>"];
                                    # [] for single-turn math (EOS ends the turn)
    env.unwrapped.observation_role  # chat role for observations in message mode ("user", tool envs "tool")
    obs, reward, terminated, truncated, info = env.step(action)          # action: the generated turn, a str

- `terminated`: the agent ended the episode (an answer was given; math always after one step).
- `truncated`: the turn budget ran out without an answer.
- `obs`: the text to append for the next turn (search results, a tool result or a short corrective message),
  "" once the episode has ended.
- `reward`: 0.0 on non-final steps, the episode reward on the final step.
- `info` on every step: `turn_format_ok` (bool), `action_type` ("search" | "answer" | "tool" | "invalid"),
  `tool_calls` (int, this turn), `gold_in_observation` (bool or None when the turn retrieved nothing),
  `error` (str or None). On the final step also `episode`: a dict with at least `reward` and `format_ok`
  plus per-environment scores (`em`, `f1`, `answer`, `num_turns`, `num_tool_calls`, `invalid_turns`, ...).
- Every info value is JSON-serializable and freshly built on each call.
- Without a task option, `reset` draws a task from the environment's built-in source using the seed, so
  `gymnasium.utils.env_checker.check_env` can drive every environment with no data at all.
- A non-string action raises `TypeError`; stepping before `reset` or after the episode ended raises
  `RuntimeError`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from agentrl.core.types import Task

MAX_TEXT_LENGTH = 10_000_000

Message = dict[str, str]
StepResult = tuple[str, float, bool, bool, dict[str, Any]]


class TextSpace(spaces.Text):
    """A `Text` space that holds any Python string up to `max_length` characters.

    gymnasium's `Text.contains` checks every character against a finite charset, but model outputs and
    retrieved documents can contain any unicode character (and control characters), so membership here checks
    only the type and the length. `sample` draws short alphanumeric strings: that is what `check_env` feeds
    `step`, and the default `Text.sample` would draw lengths up to `max_length`.
    """

    def __init__(
        self, max_length: int = MAX_TEXT_LENGTH, sample_max_length: int = 64, seed: int | None = None
    ):
        super().__init__(max_length=max_length, min_length=0, seed=seed)
        self.sample_max_length = min(sample_max_length, max_length)

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and len(x) <= self.max_length

    def sample(self, mask: Any = None, probability: Any = None) -> str:
        if mask is None and probability is None:
            length = int(self.np_random.integers(0, self.sample_max_length + 1))
            return "".join(self.np_random.choice(self.character_list, size=length))
        return super().sample(mask=mask, probability=probability)

    def __repr__(self) -> str:
        return f"TextSpace(max_length={self.max_length})"


def coerce_task(task: Task | Mapping[str, Any]) -> Task:
    """Accept a `Task` or a mapping of Task fields (as read back from JSON)."""
    if isinstance(task, Task):
        return task
    if isinstance(task, Mapping):
        return Task.from_dict(dict(task))
    raise TypeError(
        "options['task'] must be an agentrl.core.types.Task or a dict of Task fields, "
        f"got {type(task).__name__}"
    )


def check_action(env: object, action: object) -> str:
    """Return `action` if it is a str, else raise a TypeError that names the environment and the type."""
    if not isinstance(action, str):
        raise TypeError(
            f"{type(env).__name__}.step expects the generated turn as a str, got {type(action).__name__}; "
            "decode the token ids to text first"
        )
    return action


class TextEnv(gym.Env[str, str]):
    """Base class for text environments: task handling, seeding, spaces, turn bookkeeping and rendering.

    Subclasses implement `default_task` (the built-in task source), `initial_messages` (the prompt) and `turn`
    (one agent turn). The base checks the action type, refuses steps outside an episode, keeps the transcript
    for `render()` and copies every returned info so callers never share state with the env.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["ansi"], "render_fps": 1}
    stop_strings: list[str]
    observation_role: str

    def __init__(self, render_mode: str | None = None, observation_role: str = "user") -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode must be one of {self.metadata['render_modes']} or None, got {render_mode!r}"
            )
        self.render_mode = render_mode
        self.observation_role = observation_role
        self.stop_strings = []
        self.observation_space = TextSpace()
        self.action_space = TextSpace()
        self.task: Task | None = None
        self.num_turns = 0
        self.done = True
        self.transcript: list[Message] = []

    def default_task(self, rng: np.random.Generator) -> Task:
        """A task from the built-in source, drawn with the env's seeded generator."""
        raise NotImplementedError

    def initial_messages(self, task: Task) -> list[Message]:
        """System (optional) and user messages that open an episode for `task`."""
        raise NotImplementedError

    def start(self, task: Task) -> None:
        """Hook run after a task is chosen (per-episode state)."""

    def turn(self, action: str) -> StepResult:
        """Process one agent turn; `self.num_turns` already counts it."""
        raise NotImplementedError

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        options = options or {}
        raw = options.get("task")
        self.task = coerce_task(raw) if raw is not None else self.default_task(self.np_random)
        self.num_turns = 0
        self.done = False
        self.start(self.task)
        messages = self.initial_messages(self.task)
        self.transcript = copy.deepcopy(messages)
        info = {"messages": messages, "task_id": self.task.id, "dataset": self.task.dataset}
        return messages[-1]["content"], copy.deepcopy(info)

    def step(self, action: str) -> StepResult:
        check_action(self, action)
        if self.task is None:
            raise RuntimeError(f"{type(self).__name__}.step called before reset()")
        if self.done:
            raise RuntimeError(
                f"{type(self).__name__}.step called after the episode ended; call reset() first"
            )
        self.num_turns += 1
        obs, reward, terminated, truncated, info = self.turn(action)
        self.done = terminated or truncated
        self.transcript.append({"role": "assistant", "content": action})
        if obs:
            self.transcript.append({"role": self.observation_role, "content": obs})
        return obs, float(reward), bool(terminated), bool(truncated), copy.deepcopy(info)

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        return "\n\n".join(f"[{m['role']}]\n{m['content']}" for m in self.transcript)
