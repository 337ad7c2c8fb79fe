"""The loader machinery: reading records from files or the Hugging Face hub, required-field errors, reports.

A dataset loader is a `LoaderSpec`: a `convert(record, context)` function turning one raw record into a `Task`
(or None when the dataset's own filter drops it), plus where to find the data (a Hugging Face name and config,
the file patterns it reads from a directory) and optional `prepare` / `finalize` steps. `load_tasks` drives
any registered spec over local json / jsonl (either may be gzipped) / parquet files, a directory of them, or a
hub dataset.

Nothing bad is accepted silently: an empty file, a load that yields no task, a missing, blank or ill-typed
question or answer, and a record a converter cannot read all raise a `DatasetError` (a `RecordError` for one
record) whose message names the file, the line and the field; `on_error="skip"` skips bad records instead and
counts them in the `LoadReport`. A directory holding several data files is read by split: only the files whose
name carries the split (`train`; `dev` / `validation` / `val`; `test`) are read, and the report names them.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentrl.core.files import iter_jsonl, utf8_problem
from agentrl.core.registry import Registry
from agentrl.core.types import Task

log = logging.getLogger(__name__)

FILE_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet")
ON_ERROR = ("raise", "skip")
SPLIT_ALIASES = (("train",), ("dev", "validation", "val", "valid"), ("test",))
READ_ALL_SPLITS = "all"
_SCALAR = (str, int, float)


class DatasetError(ValueError):
    """A data source that cannot give tasks (an empty file, no task at all, files no split selects)."""


class RecordError(DatasetError):
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
        return self._field(*names)[1]

    def _field(self, *names: str) -> tuple[str, Any]:
        for name in names:
            if name in self.data and self.data[name] is not None:
                return name, self.data[name]
        raise RecordError(f"{self.where()}: record is missing required field {names[0]!r}")

    def error(self, field: str, message: str) -> RecordError:
        """A RecordError reading `source:line: field 'field' message`."""
        return RecordError(f"{self.where()}: field {field!r} {message}")

    def _scalar_text(self, field: str, value: Any) -> str:
        if isinstance(value, bool) or not isinstance(value, _SCALAR):
            raise self.error(field, f"must be a string or a number, got {type(value).__name__} {value!r:.80}")
        text = str(value)
        if not text.strip():
            raise self.error(field, "is empty")
        return text

    def require_text(self, *names: str) -> str:
        """The first present field among `names` as non-blank text (a string or a number); else a RecordError
        naming the field (missing, blank, or a list / object / boolean)."""
        name, value = self._field(*names)
        return self._scalar_text(name, value)

    def require_answers(self, *names: str) -> list[str]:
        """The gold answers in the first present field among `names`: one string or number, or a non-empty
        list of them, none blank; else a RecordError naming the field (and the list index)."""
        name, value = self._field(*names)
        return self.answer_list(name, value)

    def answer_list(self, name: str, value: Any) -> list[str]:
        """`value` (field `name`) checked as gold answers, see `require_answers`."""
        if isinstance(value, list | tuple):
            if not value:
                raise self.error(name, "is an empty list (no gold answer)")
            return [self._scalar_text(f"{name}[{i}]", item) for i, item in enumerate(value)]
        return [self._scalar_text(name, value)]

    def get(self, name: str, default: Any = None) -> Any:
        value = self.data.get(name, default)
        return default if value is None else value


@dataclass
class LoadReport:
    """Counts of one load: records read, tasks produced, records dropped by the dataset filter, bad records
    skipped (unreadable lines included), with the message of each skip."""

    dataset: str
    sources: list[str] = field(default_factory=list)
    records: int = 0
    tasks: int = 0
    filtered: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        names = [Path(s).name for s in self.sources]
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        return (
            f"{self.dataset}: {self.tasks} tasks from {self.records} records in {len(self.sources)} source(s)"
            f" ({self.filtered} filtered, {self.skipped} skipped): {shown}"
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
        split_by_file_name: whether the split picks a directory's files by name (False for loaders whose
            `finalize` makes the split from all the files).
    """

    name: str
    convert: Converter
    hf_path: str | None = None
    hf_config: str | None = None
    patterns: tuple[str, ...] = ("*.jsonl", "*.jsonl.gz", "*.json", "*.json.gz", "*.parquet")
    prepare: Callable[[list[Path], LoadContext], None] | None = None
    finalize: Callable[[list[Task], LoadContext], list[Task]] | None = None
    split_by_file_name: bool = True


LOADERS: Registry[LoaderSpec] = Registry("dataset loader")


def register_loader(spec: LoaderSpec, *aliases: str) -> LoaderSpec:
    LOADERS.register(spec.name, *aliases)(spec)
    return spec


def data_suffix(path: Path) -> str | None:
    """The data-file suffix of `path` (one of `FILE_SUFFIXES`, e.g. ".jsonl.gz"), or None."""
    name = path.name.lower()
    return next((suffix for suffix in FILE_SUFFIXES if name.endswith(suffix)), None)


def _split_names(split: str) -> set[str]:
    return set(next((group for group in SPLIT_ALIASES if split.lower() in group), (split.lower(),)))


def _name_words(path: Path) -> set[str]:
    return set(re.split(r"[^a-z0-9]+", path.name.lower()))


def _file_splits(path: Path) -> set[str]:
    return {group[0] for group in SPLIT_ALIASES if _name_words(path) & set(group)}


def resolve_files(path: str | Path, patterns: Iterable[str], split: str | None = None) -> list[Path]:
    """The data files at `path`: the file itself, or the files of a directory matching `patterns`.

    When a directory holds several such files and `split` is given (and not "all"), only the files whose name
    carries the split as a word are kept (`dev`, `validation`, `val` and `valid` name one split); none kept is
    a DatasetError listing the files and the splits their names carry.
    """
    path = Path(path)
    patterns = list(patterns)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"no such file or directory: {path}")
    files = sorted({f for p in patterns for f in path.glob(p) if data_suffix(f) and f.is_file()})
    if not files:
        raise FileNotFoundError(f"no data files matching {patterns} in {path}")
    if len(files) == 1 or split is None or split == READ_ALL_SPLITS:
        return files
    chosen = [f for f in files if _name_words(f) & _split_names(split)]
    if not chosen:
        names = ", ".join(f.name for f in files)
        splits = [*sorted(set().union(*(_file_splits(f) for f in files))), READ_ALL_SPLITS]
        raise DatasetError(
            f"{len(files)} data files in {path} match {patterns} ({names}) and none is named for split "
            f"{split!r}; pass split= one of {splits} ('{READ_ALL_SPLITS}' reads every file) or a file's path"
        )
    return chosen


def read_file(path: Path, on_bad_record: Callable[[Exception], None] | None = None) -> Iterator[Record]:
    """Records of a .jsonl (line numbers), .json (a list, a {"data": [...]} wrapper or column-oriented dict;
    record numbers) or .parquet (row numbers) file; .jsonl.gz and .json.gz are read as well.

    A bad record (a line that is not UTF-8 or not a JSON object) raises a RecordError naming the line, or is
    passed to `on_bad_record` and skipped. A file that cannot be parsed at all or holds no records raises a
    DatasetError.
    """
    source = str(path)
    suffix = data_suffix(path)
    count = 0

    def bad(error: Exception) -> None:
        nonlocal count
        count += 1
        if on_bad_record is None:
            raise error
        on_bad_record(error)

    if suffix in (".jsonl", ".jsonl.gz"):
        rows: Iterable[tuple[int, Any]] = iter_jsonl(
            path, lambda line, message: RecordError(f"{source}:{line}: {message}"), on_bad_line=bad
        )
    elif suffix in (".json", ".json.gz"):
        rows = enumerate(_json_rows(_read_json(path), source), start=1)
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = enumerate(pq.read_table(path).to_pylist(), start=1)
    else:
        raise ValueError(f"unsupported file type {path.name!r} ({source}); use one of {FILE_SUFFIXES}")
    for number, data in rows:
        if isinstance(data, dict):
            count += 1
            yield Record(data, source, number)
        else:
            bad(RecordError(f"{source}:{number}: expected a JSON object, got {type(data).__name__}"))
    if count == 0:
        raise DatasetError(f"{source}: the file holds no records")


def _read_json(path: Path) -> Any:
    raw = gzip.decompress(path.read_bytes()) if path.name.lower().endswith(".gz") else path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        start = raw.rfind(b"\n", 0, exc.start) + 1
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DatasetError(f"{path}:{line}: {utf8_problem(raw[start:], exc.start - start)}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None


def _json_rows(data: Any, source: str) -> list[dict[str, Any]]:
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if isinstance(data, list):
        return data
    if isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
        columns = list(data)
        keys = list(data[columns[0]])
        return [{c: data[c].get(k) for c in columns} for k in keys]
    raise DatasetError(f"{source}: expected a list of records or a column-oriented object")


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

    def skip(error: Exception) -> None:
        if on_error == "raise":
            raise error
        report.skipped += 1
        report.errors.append(str(error))

    def skip_unreadable(error: Exception) -> None:
        report.records += 1
        skip(error)

    local = path is not None and not _looks_like_hub_name(path)
    if local:
        assert path is not None
        files = resolve_files(path, spec.patterns, split if spec.split_by_file_name else None)
        report.sources = [str(f) for f in files]
        log.info("%s: reading %s", name, ", ".join(report.sources))
        if spec.prepare is not None:
            spec.prepare(files, context)
        records: Iterable[Record] = (r for f in files for r in read_file(f, skip_unreadable))
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
        for record in records:
            report.records += 1
            try:
                task = _convert(spec, record, context)
            except RecordError as exc:
                skip(exc)
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
    if report.tasks == 0 and limit != 0:
        detail = f"; first error: {report.errors[0]}" if report.errors else ""
        raise DatasetError(f"no tasks loaded: {report.summary()}{detail}")
    log.info(report.summary())


def _convert(spec: LoaderSpec, record: Record, context: LoadContext) -> Task | None:
    """`spec.convert(record)`, with any error a converter raises on odd data turned into a RecordError that
    names the record's file and line."""
    try:
        return spec.convert(record, context)
    except RecordError:
        raise
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
        raise RecordError(f"{record.where()}: cannot read the record ({type(exc).__name__}: {exc})") from exc


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
