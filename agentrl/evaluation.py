"""Scoring a policy on held-out tasks through the same rollout engine as training.

Every environment reports its episode scores in the final step's `info["episode"]` (`reward`, `format_ok`, and
per env `f1` / `em` for QA, `answer_correct` for math, `score` for tool envs); the engine keeps them in
`Trajectory.info["episode"]`. `episode_scores` reads them back uniformly, `summarize` averages them and
`evaluate` rolls out `samples` episodes per task (greedy by default).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from agentrl.generation.base import SamplingParams
from agentrl.rollout.engine import EngineConfig, RolloutEngine
from agentrl.types import Task, Trajectory

SCORE_KEYS = {"f1": "f1", "em": "em", "answer_correct": "accuracy", "score": "score"}


def episode_scores(t: Trajectory) -> dict[str, float]:
    """`reward`, `format_ok` and whichever of f1 / em / accuracy / score the env reported (0 for an episode
    that ended before the env scored it, e.g. out of tokens)."""
    episode = t.info.get("episode") or {}
    out = {"reward": float(t.reward), "format_ok": float(bool(episode.get("format_ok", False)))}
    for key, name in SCORE_KEYS.items():
        if key in episode:
            out[name] = float(episode[key] or 0.0)
    return out


def summarize(trajectories: list[Trajectory], prefix: str = "") -> dict[str, float]:
    """Means of the episode scores (an episode the env never scored counts 0) plus searches (tool calls),
    turns and agent tokens per episode."""
    n = len(trajectories)
    if n == 0:
        return {f"{prefix}episodes": 0.0}
    sums: dict[str, float] = {}
    for t in trajectories:
        for key, value in episode_scores(t).items():
            sums[key] = sums.get(key, 0.0) + value
    out = {f"{prefix}{'format_rate' if k == 'format_ok' else k}": v / n for k, v in sums.items()}
    out[f"{prefix}searches"] = sum(t.num_tool_calls for t in trajectories) / n
    out[f"{prefix}turns"] = sum(t.num_turns for t in trajectories) / n
    out[f"{prefix}response_tokens"] = sum(t.num_agent_tokens for t in trajectories) / n
    out[f"{prefix}episodes"] = float(n)
    return out


@dataclass
class EvalResult:
    metrics: dict[str, float]
    trajectories: list[Trajectory]


def eval_engine(engine: RolloutEngine, greedy: bool = True, temperature: float = 1.0) -> RolloutEngine:
    """An engine sharing `engine`'s generator, tokenizer and executor that samples greedily (or at
    `temperature`)."""
    sampling: SamplingParams = replace(engine.config.sampling, temperature=0.0 if greedy else temperature)
    config: EngineConfig = replace(engine.config, sampling=sampling)
    return RolloutEngine(engine.generator, engine.tokenizer, engine.executor, config)


def evaluate(
    engine: RolloutEngine,
    tasks: list[Task],
    samples: int = 1,
    seed: int = 0,
    on_finish: Callable[[int], None] | None = None,
    prefix: str = "eval/",
) -> EvalResult:
    """Roll out `samples` episodes per task with `engine` and summarise them under `prefix`."""
    trajectories = engine.run(tasks, samples, on_finish=on_finish, seed=seed)
    return EvalResult(summarize(trajectories, prefix), trajectories)


def headline(metrics: dict[str, Any], prefix: str = "eval/") -> dict[str, float]:
    """The numbers a person compares: format rate, then F1 / EM or accuracy, and reward."""
    keys = ("format_rate", "f1", "em", "accuracy", "score", "reward")
    out = {k: float(metrics[prefix + k]) for k in keys if prefix + k in metrics}
    if "f1" in out or "accuracy" in out:
        out.pop("score", None)  # the env's configured score repeats F1 / accuracy
    return out
