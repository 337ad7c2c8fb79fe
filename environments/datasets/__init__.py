"""Dataset loaders that turn math and QA datasets into `Task`s (`load_tasks("hotpotqa", path)`).

Registered loaders: math500, numinamath, gsm8k, aime, amc, hotpotqa, 2wikimultihopqa, nq_open, ottqa,
searchr1, tasks (the JSONL `agentrl data filter` writes).
"""

from environments.datasets import math, ottqa, qa, searchr1, tasks  # noqa: F401  (registers the loaders)
from environments.datasets.base import (
    LOADERS,
    DatasetError,
    LoaderSpec,
    LoadReport,
    Record,
    RecordError,
    iter_tasks,
    load_tasks,
    load_tasks_with_report,
    register_loader,
)
from environments.datasets.ottqa import ottqa_corpus, serialize_table
from environments.datasets.searchr1 import write_searchr1_parquet

__all__ = [
    "LOADERS",
    "DatasetError",
    "LoadReport",
    "LoaderSpec",
    "Record",
    "RecordError",
    "iter_tasks",
    "load_tasks",
    "load_tasks_with_report",
    "ottqa_corpus",
    "register_loader",
    "serialize_table",
    "write_searchr1_parquet",
]
