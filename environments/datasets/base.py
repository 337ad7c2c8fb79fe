"""The loader machinery: reading records from files or the Hugging Face hub, required-field errors, reports.

A dataset loader is a `LoaderSpec`: a `convert(record, context)` function turning one raw record into a `Task`
(or None when the dataset's own filter drops it), plus where to find the data (a Hugging Face name and config,
the file patterns it reads from a directory) and optional `prepare` / `finalize` steps. `load_tasks` drives
any registered spec over local json / jsonl / parquet files, a directory of them, or a hub dataset.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentrl.files import iter_jsonl
from agentrl.registry import Registry
from agentrl.types import Task

log = logging.getLogger(__name__)

FILE_SUFFIXES = (".jsonl", ".json", ".parquet")
ON_ERROR = ("raise", "skip")


class RecordError(ValueError):
    """A record that cannot become a task; the message names the source, the line and the field."""


@dataclass
class Record:
    """One raw record with where it came from (`source` file or hub name, 1-based `line`)."""

    data: dict[str, Any]
    source: str
    line: int

    def where(self) -> str:
        return f"{self.source}:{self.line}"

    def require(self, *names: str) -> Any:
        """The first present, non-null field among `names` (aliases); else a RecordError naming it."""
        for name in names:
            if name in self.data and self.data[name] is not None:
                return self.data[name]
        raise RecordError(f"{self.where()}: record is missing required field {names[0]!r}")

    def get(self, name: str, default: Any = None) -> Any:
        value = self.data.get(name, default)
        return default if value is None else value


@dataclass
class LoadReport:
    """Counts of one load: records read, tasks produced, records dropped by the dataset filter, errors
    skipped."""

    dataset: str
    sources: list[str] = field(default_factory=list)
    records: int = 0
    tasks: int = 0
    filtered: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.dataset}: {self.tasks} tasks from {self.records} records in {len(self.sources)} source(s)"
            f" ({self.filtered} filtered, {self.skipped} skipped)"
        )


@dataclass
class LoadContext:
    """What a converter sees besides the record: the load options and state built by `prepare`."""

    dataset: str
    split: str
    options: dict[str, Any]
    state: dict[str, Any] = field(default_factory=dict)


Converter = Callable[[Record, LoadContext], "Task | None"]


@dataclass
class LoaderSpec:
    """How to load one dataset.

    Attributes:
        name: registry name.
        convert: raw record -> Task (None: dropped by the dataset's filter).
        hf_path, hf_config: hub dataset used when no local path is given (config may be chosen by options).
        patterns: glob patterns of the files read when `path` is a directory.
        prepare: builds shared state once per load (e.g. OTT-QA's tables) from the resolved files and options.
        finalize: reorders or splits the full task list (e.g. NuminaMath's seeded shuffle and eval split).
    """

    name: str
    convert: Converter
    hf_path: str | None = None
    hf_config: str | None = None
    patterns: tuple[str, ...] = ("*.jsonl", "*.json", "*.parquet")
    prepare: Callable[[list[Path], LoadContext], None] | None = None
    finalize: Callable[[list[Task], LoadContext], list[Task]] | None = None


LOADERS: Registry[LoaderSpec] = Registry("dataset loader")


def register_loader(spec: LoaderSpec, *aliases: str) -> LoaderSpec:
    LOADERS.register(spec.name, *aliases)(spec)
    return spec


def resolve_files(path: str | Path, patterns: Iterable[str]) -> list[Path]:
    """The data files at `path`: the file itself, or the files of a directory matching `patterns`."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(
            {f for p in patterns for f in path.glob(p) if f.suffix in FILE_SUFFIXES and f.is_file()}
        )
        if not files:
            raise FileNotFoundError(f"no data files matching {list(patterns)} in {path}")
        return files
    raise FileNotFoundError(f"no such file or directory: {path}")


def read_file(path: Path) -> Iterator[Record]:
    """Records of a .jsonl (line numbers), .json (a list, a {"data": [...]} wrapper or column-oriented dict;
    record numbers) or .parquet (row numbers) file."""
    source = str(path)
    if path.suffix == ".jsonl":
        for line_no, data in iter_jsonl(
            path, lambda line, message: RecordError(f"{source}:{line}: {message}")
        ):
            yield Record(data, source, line_no)
    elif path.suffix == ".json":
        with path.open(encoding="utf-8") as handle:
            data = json.load(handle)
        for i, row in enumerate(_json_rows(data, source), start=1):
            yield Record(row, source, i)
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        for i, row in enumerate(table.to_pylist(), start=1):
            yield Record(row, source, i)
    else:
        raise ValueError(f"unsupported file type {path.suffix!r} ({source}); use one of {FILE_SUFFIXES}")


def _json_rows(data: Any, source: str) -> list[dict[str, Any]]:
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if isinstance(data, list):
        return data
    if isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
        columns = list(data)
        keys = list(data[columns[0]])
        return [{c: data[c].get(k) for c in columns} for k in keys]
    raise RecordError(f"{source}: expected a list of records or a column-oriented object")


def read_hub(spec: LoaderSpec, split: str, config: str | None) -> Iterator[Record]:
    """Records of a Hugging Face hub dataset (needs network access)."""
    import datasets

    if spec.hf_path is None:
        raise ValueError(f"dataset {spec.name!r} has no Hugging Face name; pass a local path")
    dataset = datasets.load_dataset(spec.hf_path, config, split=split)
    source = f"{spec.hf_path}[{config or ''}:{split}]"
    for i, row in enumerate(dataset, start=1):
        yield Record(dict(row), source, i)


def iter_tasks(
    name: str,
    path: str | Path | None = None,
    split: str = "test",
    limit: int | None = None,
    on_error: str = "raise",
    report: LoadReport | None = None,
    **options: Any,
) -> Iterator[Task]:
    """Yield the tasks of dataset `name` lazily (see `load_tasks`); fills `report` as it goes."""
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    spec = LOADERS.get(name)
    report = report if report is not None else LoadReport(name)
    context = LoadContext(name, split, dict(options))
    local = path is not None and not _looks_like_hub_name(path)
    if local:
        assert path is not None
        files = resolve_files(path, spec.patterns)
        report.sources = [str(f) for f in files]
        if spec.prepare is not None:
            spec.prepare(files, context)
        records: Iterable[Record] = (r for f in files for r in read_file(f))
    else:
        if spec.prepare is not None:
            spec.prepare([], context)
        hub = str(path) if path is not None else None
        if hub is not None:
            spec = LoaderSpec(**{**spec.__dict__, "hf_path": hub})
        config = options.get("config") or options.get("setting") or spec.hf_config
        report.sources = [f"{spec.hf_path}[{config or ''}:{split}]"]
        records = read_hub(spec, split, config)

    def converted() -> Iterator[Task]:
        for record in _guarded(records, report, on_error):
            report.records += 1
            try:
                task = spec.convert(record, context)
            except RecordError as exc:
                if on_error == "raise":
                    raise
                report.skipped += 1
                report.errors.append(str(exc))
                continue
            if task is None:
                report.filtered += 1
                continue
            yield task

    stream: Iterable[Task] = converted()
    if spec.finalize is not None:
        stream = spec.finalize(list(stream), context)
    for i, task in enumerate(stream):
        if limit is not None and i >= limit:
            break
        report.tasks += 1
        yield task
    log.info(report.summary())


def _guarded(records: Iterable[Record], report: LoadReport, on_error: str) -> Iterator[Record]:
    iterator = iter(records)
    while True:
        try:
            record = next(iterator)
        except StopIteration:
            return
        except RecordError as exc:
            if on_error == "raise":
                raise
            report.skipped += 1
            report.errors.append(str(exc))
            continue
        yield record


def _looks_like_hub_name(path: str | Path) -> bool:
    text = str(path)
    if Path(text).exists() or text.endswith(FILE_SUFFIXES):
        return False
    return text.count("/") == 1 and not text.startswith((".", "/", "~"))


def load_tasks(
    name: str,
    path: str | Path | None = None,
    split: str = "test",
    limit: int | None = None,
    on_error: str = "raise",
    **options: Any,
) -> list[Task]:
    """Load dataset `name` as a list of tasks.

    Args:
        name: a registered loader (`LOADERS.names()`).
        path: a local .json/.jsonl/.parquet file or a directory of them; a hub name ("owner/dataset"); or None
            for the loader's default hub dataset.
        split: the hub split (local files are read whole, except where a loader defines splits itself).
        limit: keep at most this many tasks.
        on_error: "raise" on a bad record (the error names file, line and field) or "skip" it and count it.
        options: loader-specific options (see each loader).
    """
    tasks, _ = load_tasks_with_report(name, path, split, limit, on_error, **options)
    return tasks


def load_tasks_with_report(
    name: str,
    path: str | Path | None = None,
    split: str = "test",
    limit: int | None = None,
    on_error: str = "raise",
    **options: Any,
) -> tuple[list[Task], LoadReport]:
    """`load_tasks` plus the `LoadReport` with the counts."""
    report = LoadReport(name)
    tasks = list(iter_tasks(name, path, split, limit, on_error, report=report, **options))
    return tasks, report
