"""The Search-R1 parquet schema: reading it as tasks and writing tasks into it.

Columns: `id`, `question`, `golden_answers` (list), `data_source`, `prompt` (chat messages),
`ability`, `reward_model` (`{"style": "rule", "ground_truth": {"target": [...]}}`) and `extra_info`
(`{"split", "index"}`); `metadata` (a JSON string) is added so tasks round-trip.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agentrl.core.types import Task
from environments.datasets.base import LoadContext, LoaderSpec, Record, RecordError, register_loader
from environments.search_env import SEARCH_SYSTEM_PROMPT


def _answers(record: Record) -> list[str]:
    if record.get("golden_answers") is not None:
        return record.require_answers("golden_answers")
    reward_model = record.get("reward_model") or {}
    golds = (reward_model.get("ground_truth") or {}).get("target") if isinstance(reward_model, dict) else None
    if golds is None:
        raise RecordError(f"{record.where()}: record is missing required field 'golden_answers'")
    return record.answer_list("reward_model.ground_truth.target", golds)


def _metadata(record: Record) -> dict[str, Any]:
    raw = record.get("metadata")
    if not isinstance(raw, str) or not raw:
        return {}
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise record.error("metadata", f"is not valid JSON ({exc.msg})") from None
    if not isinstance(meta, dict):
        raise record.error("metadata", f"must hold a JSON object, got {type(meta).__name__}")
    return meta


def _convert(record: Record, ctx: LoadContext) -> Task:
    question = record.require_text("question").strip()
    extra = record.get("extra_info") or {}
    uid = record.get("id", f"{extra.get('split', 'searchr1')}_{extra.get('index', record.line)}")
    meta = _metadata(record)
    return Task(
        id=str(uid),
        question=question,
        answers=_answers(record),
        dataset=str(record.get("data_source", "searchr1")),
        metadata=meta,
    )


def to_searchr1_rows(
    tasks: Sequence[Task], split: str = "train", prompt: str = SEARCH_SYSTEM_PROMPT
) -> list[dict[str, Any]]:
    """Tasks as Search-R1 rows (instructions and question in one user message, as Search-R1 does)."""
    return [
        {
            "id": task.id,
            "question": task.question,
            "golden_answers": list(task.answers),
            "data_source": task.dataset,
            "prompt": [{"role": "user", "content": f"{prompt}\n\nQuestion: {task.question}"}],
            "ability": "fact-reasoning",
            "reward_model": {"style": "rule", "ground_truth": {"target": list(task.answers)}},
            "extra_info": {"split": split, "index": i},
            "metadata": json.dumps(task.metadata, ensure_ascii=False),
        }
        for i, task in enumerate(tasks)
    ]


def write_searchr1_parquet(tasks: Sequence[Task], path: str | Path, split: str = "train") -> Path:
    """Write tasks as a Search-R1 parquet file; returns the path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(to_searchr1_rows(tasks, split)), path)
    return path


register_loader(LoaderSpec("searchr1", _convert, hf_path="PeterJinGo/nq_hotpotqa_train"), "search-r1")
