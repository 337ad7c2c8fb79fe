"""`agentrl data filter`: keep the training questions worth training on.

Two filters, applied in this order:

1. **Overlap**: questions whose normalised text also appears in an evaluation file are dropped (and listed),
   so that a later `agentrl eval` on that file measures transfer, not memory.
2. **Difficulty** (WAPO F.2.1): each remaining question is rolled out `samples` times with the current model
   through the training rollout engine (the evaluator of `agentrl eval`, sampled); a question is kept when its
   accuracy (the fraction of samples counted correct: exact match for QA, a correct answer for math) lies
   strictly between `low` and `high` (0 and 0.5 by default). Questions the model always fails or already
   solves half the time or more give GRPO-style training little signal.

The kept questions are written as `tasks` JSONL (`Task.to_dict()` per line, corpus included), which any
config reads with `data.dataset=tasks data.path=FILE`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from agentrl.core.files import atomic_open, disk_full_error
from agentrl.core.types import Task
from agentrl.evaluation.evaluator import EvalSettings
from agentrl.evaluation.overlap import Overlap, find_overlaps
from agentrl.experiment import ExperimentConfig


def check_bounds(low: float, high: float) -> None:
    if not 0.0 <= low < high <= 1.0:
        raise ValueError(f"--low and --high must satisfy 0 <= low < high <= 1, got {low} and {high}")


def drop_overlaps(tasks: list[Task], eval_tasks: list[Task]) -> tuple[list[Task], list[Overlap]]:
    """`tasks` without the ones whose question appears in `eval_tasks`; the overlaps, by training index."""
    overlaps = find_overlaps(eval_tasks, tasks)
    seen = {o.eval_index for o in overlaps}
    return [t for i, t in enumerate(tasks) if i not in seen], overlaps


def difficulty_filter(
    cfg: ExperimentConfig,
    tasks: list[Task],
    settings: EvalSettings,
    low: float,
    high: float,
    on_finish: Callable[[int], None] | None = None,
) -> tuple[list[Task], dict[str, float]]:
    """Roll out `settings.samples` episodes per task with `cfg`'s model and engine; keep the tasks with
    low < accuracy < high. Returns them and the accuracy of every task by id."""
    from agentrl.evaluation.evaluator import evaluate
    from agentrl.rollout.setup import build_engine, build_generator_for, load_policy

    check_bounds(low, high)
    cfg = replace(cfg, sft=replace(cfg.sft, enabled=False))
    model, tokenizer = load_policy(cfg)
    engine, executor = build_engine(cfg, build_generator_for(cfg, model, tokenizer), tokenizer)
    try:
        result = evaluate(engine, tasks, settings, on_finish=on_finish)
    finally:
        executor.close()
    accuracy = {q.id: q.num_correct / len(q.samples) for q in result.questions}
    kept = [t for t in tasks if low < accuracy[t.id] < high]
    return kept, accuracy


def write_tasks(path: Path, tasks: list[Task]) -> None:
    """Write `tasks` as JSONL to `path` atomically; a full disk is a `NoSpaceError` and leaves `path` as it
    was."""
    with disk_full_error(path.parent, what=str(path)), atomic_open(path) as f:
        for task in tasks:
            f.write(json.dumps(task.to_dict(), ensure_ascii=False) + "\n")
