"""Single-turn math environment (WAPO appendix F.1): one response, binary reward R = I_fmt * I_ans."""

from __future__ import annotations

from typing import Any

import numpy as np

from agentrl.core.types import Task
from environments.base import Message, StepResult, TextEnv
from environments.math_answers import EQUIVALENCE_MODES, MATH_INSTRUCTION, math_equal, parse_math_response


def arithmetic_task(rng: np.random.Generator) -> Task:
    """A small integer arithmetic problem: the built-in task source when no dataset is given."""
    a, b, c = (int(x) for x in rng.integers(2, 100, size=3))
    kind = int(rng.integers(0, 3))
    if kind == 0:
        question, answer = f"What is {a} + {b} * {c}?", a + b * c
    elif kind == 1:
        question, answer = f"What is ({a} - {b}) * {c}?", (a - b) * c
    else:
        question, answer = (
            f"A box holds {a} rows of {b} marbles, and {c} marbles are removed. How many remain?",
            (a * b - c),
        )
    return Task(
        id=f"arith-{a}-{b}-{c}-{kind}", question=question, answers=[str(answer)], dataset="arithmetic"
    )


class MathEnv(TextEnv):
    """The math problem plus the WAPO instruction as one user turn; the response is scored once.

    Args:
        equivalence: "exact" (the paper's exact match after light normalization) or "math" (numeric and LaTeX
            equivalence, see `environments.math_answers`).
        system_prompt: optional system message placed before the problem.
        instruction: text appended to each problem (default: WAPO F.1's instruction).
        render_mode: None or "ansi".
    """

    def __init__(
        self,
        equivalence: str = "exact",
        system_prompt: str | None = None,
        instruction: str = MATH_INSTRUCTION,
        render_mode: str | None = None,
    ) -> None:
        super().__init__(render_mode=render_mode)
        if equivalence not in EQUIVALENCE_MODES:
            raise ValueError(f"equivalence must be one of {EQUIVALENCE_MODES}, got {equivalence!r}")
        self.equivalence = equivalence
        self.system_prompt = system_prompt
        self.instruction = instruction

    def default_task(self, rng: np.random.Generator) -> Task:
        return arithmetic_task(rng)

    def initial_messages(self, task: Task) -> list[Message]:
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return [*messages, {"role": "user", "content": f"{task.question}\n\n{self.instruction}"}]

    def turn(self, action: str) -> StepResult:
        assert self.task is not None
        parsed = parse_math_response(action)
        correct = any(math_equal(parsed.answer, gold, self.equivalence) for gold in self.task.answers)
        reward = float(parsed.format_ok and correct)
        episode: dict[str, Any] = {
            "reward": reward,
            "format_ok": parsed.format_ok,
            "answer_correct": correct,
            "answer": parsed.answer,
            "num_turns": 1,
            "num_tool_calls": 0,
            "invalid_turns": 0 if parsed.format_ok else 1,
        }
        info = {
            "turn_format_ok": parsed.format_ok,
            "action_type": "answer" if parsed.answer is not None else "invalid",
            "tool_calls": 0,
            "gold_in_observation": None,
            "error": parsed.error,
            "answer_correct": correct,
            "episode": episode,
        }
        return "", reward, True, False, info
