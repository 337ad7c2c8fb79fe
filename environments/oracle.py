"""A scripted oracle agent for the search environment: a ceiling check of corpus, retriever and reward.

The oracle knows the gold supporting titles (`task.metadata["supporting_titles"]`). It searches each title in
turn, then answers. It answers a gold answer only when the evidence makes it recoverable: the answer occurs
in the retrieved text, or it is "yes"/"no" (a comparison answer that is judged rather than copied). Otherwise
it answers "unknown" and scores 0. Its mean F1 therefore measures how often the environment lets a perfect
reader succeed, i.e. whether the supporting documents are retrievable and contain the answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym

from agentrl.core.types import Task
from environments.rewards import answer_in_text, normalize_answer

_JUDGED = frozenset({"yes", "no"})


@dataclass
class OracleAgent:
    """Produces well-formed turns: one search per supporting title, then the answer."""

    task: Task
    observations: list[str] = field(default_factory=list)
    step_index: int = 0

    def act(self, observation: str | None = None) -> str:
        """The next turn given the last observation (None at the start)."""
        if observation:
            self.observations.append(observation)
        titles = list(self.task.metadata.get("supporting_titles") or [])
        if self.step_index < len(titles):
            title = titles[self.step_index]
            self.step_index += 1
            return f"<think>I need the article about {title}.</think>\n<search> {title} </search>"
        return f"<think>The retrieved documents settle it.</think>\n<answer> {self.answer()} </answer>"

    def answer(self) -> str:
        evidence = "\n".join(self.observations)
        for gold in self.task.answers:
            if normalize_answer(gold) in _JUDGED or answer_in_text(evidence, [gold]):
                return gold
        return "unknown"


def run_oracle_episode(env: gym.Env[str, str], task: Task, seed: int = 0) -> dict[str, Any]:
    """Play one episode with the oracle; return the env's final `episode` info."""
    agent = OracleAgent(task)
    obs, _ = env.reset(seed=seed, options={"task": task})
    observation: str | None = None
    while True:
        obs, _, terminated, truncated, info = env.step(agent.act(observation))
        observation = obs
        if terminated or truncated:
            return dict(info["episode"])


def evaluate_oracle(env: gym.Env[str, str], tasks: list[Task]) -> dict[str, float]:
    """Mean reward, F1, EM and format rate of the oracle over `tasks`."""
    episodes = [run_oracle_episode(env, task, seed=i) for i, task in enumerate(tasks)]
    n = max(len(episodes), 1)
    return {
        "episodes": float(len(episodes)),
        "reward": sum(e["reward"] for e in episodes) / n,
        "f1": sum(e["f1"] for e in episodes) / n,
        "em": sum(e["em"] for e in episodes) / n,
        "format_ok": sum(e["format_ok"] for e in episodes) / n,
    }
