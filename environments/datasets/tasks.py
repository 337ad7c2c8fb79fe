"""The `tasks` loader: JSONL of `Task.to_dict()` records, as `agentrl data filter` writes them.

Every field of a task (id, question, answers, dataset, metadata, its own corpus) survives the round trip, so a
filtered file trains and evaluates exactly like the dataset it came from.
"""

from __future__ import annotations

from agentrl.core.types import Task
from environments.datasets.base import LoadContext, LoaderSpec, Record, RecordError, register_loader


def _task(record: Record, ctx: LoadContext) -> Task:
    record.require_text("question")
    try:
        return Task.from_dict(record.data)
    except (TypeError, ValueError) as exc:
        raise RecordError(f"{record.where()}: not a task record: {exc}") from None


register_loader(LoaderSpec("tasks", _task, patterns=("*.jsonl", "*.jsonl.gz")))
