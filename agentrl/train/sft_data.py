"""Episodes to imitate: the oracle's, the policy's own successes (rejection sampling), or a trajectories file.

Oracle episodes are played through the rollout engine with `OracleGenerator` standing in for the policy, so
they carry exactly the engine's chat template, observation tokens and loss masks: SFT on them trains the
same tokens RL will later sample.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from typing import Any

from agentrl.core.generator import Completion, PolicyWeights, SamplingParams, per_prompt
from agentrl.core.types import Task, Trajectory
from agentrl.rollout.engine import RolloutEngine
from environments.oracle import OracleAgent


class OracleGenerator:
    """A `Generator` that answers every prompt with the oracle agent's next turn, tokenized.

    The task is recognised by its question in the prompt; the turn index is the number of searches already
    made after the question, and the evidence the oracle reads is everything after the question.
    """

    def __init__(self, tokenizer: Any, tasks: list[Task]) -> None:
        self.tokenizer = tokenizer
        self.tasks = sorted(tasks, key=lambda t: -len(t.question.strip()))
        self.eos_ids: set[int] = set()

    def _task(self, text: str) -> tuple[Task, int]:
        for task in self.tasks:
            position = text.find(task.question.strip())
            if position >= 0:
                return task, position + len(task.question.strip())
        raise ValueError("the oracle got a prompt for a task it was not given")

    def action(self, text: str) -> str:
        task, start = self._task(text)
        after = text[start:]
        agent = OracleAgent(task, observations=[after], step_index=after.count("</search>"))
        return agent.act()

    def generate(
        self, prompt_token_ids: list[list[int]], sampling: SamplingParams | list[SamplingParams]
    ) -> list[Completion]:
        params = per_prompt(sampling, len(prompt_token_ids))
        out = []
        for prompt, sp in zip(prompt_token_ids, params, strict=True):
            action = self.action(self.tokenizer.decode(prompt, skip_special_tokens=False))
            ids = list(self.tokenizer.encode(action, add_special_tokens=False))[: sp.max_new_tokens]
            stop = next((s for s in sp.stop if action.endswith(s)), None)
            reason = "stop" if stop is not None else "length"
            out.append(Completion(ids, [0.0] * len(ids), reason, action, stop))  # type: ignore[arg-type]
        return out

    def update_policy(self, source: PolicyWeights, version: int) -> None:
        raise TypeError("the oracle generator has no weights to update; sync the policy's own generator")

    def awake(self) -> contextlib.nullcontext[OracleGenerator]:
        return contextlib.nullcontext(self)

    def close(self) -> None:
        """The oracle holds nothing to release."""


def oracle_episodes(engine: RolloutEngine, tasks: list[Task], seed: int = 0) -> list[Trajectory]:
    """One oracle episode per task through `engine` (whose generator must be an `OracleGenerator`)."""
    episodes = engine.run(tasks, 1, seed=seed)
    for t in episodes:
        t.sampling = {}
    return episodes


def keep_successes(
    episodes: list[Trajectory], min_reward: float, difficulty: list[float] | None = None
) -> tuple[list[Trajectory], dict[str, float]]:
    """Episodes with reward >= `min_reward`, from tasks whose success rate lies in `difficulty` = [low, high]
    when given (WAPO's filter keeps 0 < rate < 0.5); returns them and a report."""
    by_task: dict[str, list[Trajectory]] = defaultdict(list)
    for t in episodes:
        by_task[t.task_id].append(t)
    kept: list[Trajectory] = []
    tasks_kept = 0
    for group in by_task.values():
        rate = sum(t.reward >= min_reward for t in group) / len(group)
        if difficulty is not None and not difficulty[0] <= rate <= difficulty[1]:
            continue
        successes = [t for t in group if t.reward >= min_reward and t.finish_reason != "error"]
        if successes:
            tasks_kept += 1
            kept.extend(successes)
    report = {
        "sft/episodes_sampled": float(len(episodes)),
        "sft/episodes_kept": float(len(kept)),
        "sft/tasks": float(len(by_task)),
        "sft/tasks_kept": float(tasks_kept),
    }
    return kept, report
