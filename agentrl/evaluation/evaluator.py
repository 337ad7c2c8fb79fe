"""Scoring a policy on held-out tasks through the same rollout engine as training.

Every environment reports its episode scores in the final step's `info["episode"]` (`reward`, `format_ok`, and
per env `f1` / `em` for QA, `answer_correct` for math, `score` for tool envs); the engine keeps them in
`Trajectory.info["episode"]`. `evaluate` rolls out `samples` episodes per task (greedy by default), a chunk of
questions at a time with a seed derived from the chunk's position, turns them into per-question records
(`agentrl.evaluation.records`) and computes the report (`agentrl.evaluation.metrics`). `agentrl train`'s
held-out evaluations and `agentrl eval` both call it, so they log and report the same numbers under the same
names; a chunk already evaluated (a resumed `agentrl eval`) is passed in and skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from agentrl.core.generator import SamplingParams
from agentrl.core.seeding import derive_seed
from agentrl.core.types import Task, Trajectory
from agentrl.evaluation.metrics import check_ks, default_ks, flat_metrics, report_metrics
from agentrl.evaluation.records import QuestionRecord, episode_scores, question_records
from agentrl.experiment import ExperimentConfig
from agentrl.rollout.engine import EngineConfig, RolloutEngine

__all__ = [
    "EvalResult", "EvalSettings", "episode_scores", "eval_engine", "evaluate", "headline", "summarize",
]  # fmt: skip


def summarize(trajectories: list[Trajectory], prefix: str = "") -> dict[str, float]:
    """Means of the episode scores (an episode the env never scored counts 0) plus searches (tool calls),
    turns and agent tokens per episode (the trainer's per-step `episode/` metrics)."""
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
class EvalSettings:
    """How an evaluation samples and what it reports.

    Attributes:
        samples: episodes per question (n).
        greedy: decode greedily (then n must be 1: greedy samples are identical); else sample at
            `temperature`.
        seed: the evaluation seed; chunk i rolls out with `derive_seed(seed, "chunk", i)`.
        chunk_size: questions per engine call; results and resumption are per chunk, so it is part of what
            makes two evaluations identical.
        ks: pass@k values to report (None: 1, 2, 4, ... n).
        bootstrap: bootstrap resamples for the confidence intervals (0: none).
    """

    samples: int = 1
    greedy: bool = True
    temperature: float = 1.0
    seed: int = 0
    chunk_size: int = 32
    ks: list[int] | None = None
    bootstrap: int = 1000

    @classmethod
    def from_config(cls, cfg: ExperimentConfig, **changes: Any) -> EvalSettings:
        """From an `ExperimentConfig`'s `eval` section; the seed derives from the run seed, and a chunk is as
        many questions as fill one generation batch (`rollout.batch_size` episodes)."""
        e = cfg.eval
        settings = cls(
            samples=e.samples, greedy=e.greedy, temperature=e.temperature, seed=derive_seed(cfg.seed, "eval"),
            chunk_size=max(1, cfg.rollout.batch_size // max(1, e.samples)),
        )  # fmt: skip
        return replace(settings, **changes)

    def validate(self) -> None:
        """Clear errors for settings no evaluation can honour (before anything is loaded or generated)."""
        if self.samples < 1 or self.chunk_size < 1:
            raise ValueError(f"samples and chunk_size must be >= 1, got {self.samples} and {self.chunk_size}")
        if self.greedy and self.samples > 1:
            raise ValueError(
                f"{self.samples} greedy samples per question would all be the same episode; sample instead "
                "(--temperature T, or eval.greedy=false with eval.temperature) or use 1 sample"
            )
        if not self.greedy and self.temperature <= 0:
            raise ValueError(f"sampled evaluation needs temperature > 0, got {self.temperature}")
        if self.ks:
            check_ks(self.ks, self.samples)

    @property
    def pass_ks(self) -> list[int]:
        return check_ks(self.ks, self.samples) if self.ks else default_ks(self.samples)


@dataclass
class EvalResult:
    """`metrics`: flat scalars under the prefix; `report`: the nested report; `questions`: per-question
    records in task order; `trajectories`: the episodes rolled out by this call (skipped chunks have none)."""

    metrics: dict[str, float]
    report: dict[str, Any]
    questions: list[QuestionRecord]
    trajectories: list[Trajectory] = field(default_factory=list)


def eval_engine(engine: RolloutEngine, greedy: bool = True, temperature: float = 1.0) -> RolloutEngine:
    """An engine sharing `engine`'s generator, tokenizer and executor that samples greedily (or at
    `temperature`)."""
    sampling: SamplingParams = replace(engine.config.sampling, temperature=0.0 if greedy else temperature)
    config: EngineConfig = replace(engine.config, sampling=sampling)
    return RolloutEngine(engine.generator, engine.tokenizer, engine.executor, config)


def chunk_seed(seed: int, chunk: int) -> int:
    return derive_seed(seed, "chunk", chunk)


def evaluate(
    engine: RolloutEngine,
    tasks: Sequence[Task],
    settings: EvalSettings | None = None,
    on_finish: Callable[[int], None] | None = None,
    prefix: str = "eval/",
    done: dict[int, QuestionRecord] | None = None,
    on_chunk: Callable[[list[QuestionRecord]], None] | None = None,
) -> EvalResult:
    """Roll out `settings.samples` episodes per task with `engine` and report them.

    Args:
        engine: the rollout engine (its sampling is replaced by the settings' greedy / temperature).
        tasks: the questions, in a fixed order (chunks are consecutive `chunk_size` slices of it).
        settings: samples, sampling, seed, chunk size, ks, bootstrap resamples.
        on_finish: called with the number of episodes that just ended.
        prefix: prefix of the flat metric names.
        done: records already evaluated, by question index; chunks they complete are not rolled out again.
        on_chunk: receives each newly evaluated chunk's records (e.g. to append them to a file).
    """
    settings = settings or EvalSettings()
    settings.validate()
    if not tasks:
        raise ValueError("nothing to evaluate: the task list is empty")
    sampler = eval_engine(engine, settings.greedy, settings.temperature)
    records = dict(done or {})
    trajectories: list[Trajectory] = []
    size = settings.chunk_size
    for chunk, start in enumerate(range(0, len(tasks), size)):
        part = list(tasks[start : start + size])
        if all(start + i in records and records[start + i].id == t.id for i, t in enumerate(part)):
            continue
        seed = chunk_seed(settings.seed, chunk)
        episodes = sampler.run(part, settings.samples, group_offset=start, on_finish=on_finish, seed=seed)
        fresh = question_records(part, episodes, start)
        if on_chunk is not None:
            on_chunk(fresh)
        records.update({r.index: r for r in fresh})
        trajectories.extend(episodes)
    questions = [records[i] for i in range(len(tasks))]
    report = report_metrics(questions, settings.pass_ks, settings.bootstrap, derive_seed(settings.seed, "ci"))
    return EvalResult(flat_metrics(report, prefix), report, questions, trajectories)


def headline(metrics: dict[str, Any], prefix: str = "eval/") -> dict[str, float]:
    """The numbers a person compares: format rate, then F1 / EM or accuracy, and reward."""
    keys = ("format_rate", "f1", "em", "accuracy", "score", "reward")
    out = {k: float(metrics[prefix + k]) for k in keys if prefix + k in metrics}
    if "f1" in out or "accuracy" in out:
        out.pop("score", None)  # the env's configured score repeats F1 / accuracy
    return out
