"""File helpers: atomic writes (a file is either its old self or completely written, never half of each),
a named error for a full disk and streamed JSONL reading with line-numbered errors."""

from __future__ import annotations

import contextlib
import errno
import gzip
import io
import json
import os
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file beside `path` for writing; on success fsync it and rename it over `path`.

    If the block raises, the temporary file is removed and `path` is left as it was. Parent directories are
    created. `mode` is `"w"` (UTF-8 text) or `"wb"`.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes new files only: mode must be 'w' or 'wb', got {mode!r}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class NoSpaceError(RuntimeError):
    """A write ran out of disk space; the message names the directory."""


def is_disk_full(exc: BaseException) -> bool:
    """Whether `exc` reports a full disk: ENOSPC, SQLite's "database or disk is full", or a C++ library's
    (FAISS) write error quoting ENOSPC's message."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(exc, sqlite3.OperationalError):
        return "disk is full" in str(exc)
    return isinstance(exc, RuntimeError) and os.strerror(errno.ENOSPC) in str(exc)


@contextlib.contextmanager
def disk_full_error(
    directory: str | Path, cleanup: Callable[[], None] | None = None, what: str = ""
) -> Iterator[None]:
    """Turn running out of space inside the block into a `NoSpaceError` naming `directory`, after calling
    `cleanup` (which removes the partial files); `what` says what was being written."""
    try:
        yield
    except (OSError, sqlite3.OperationalError, RuntimeError) as exc:
        if isinstance(exc, NoSpaceError) or not is_disk_full(exc):
            raise
        if cleanup is not None:
            cleanup()
        doing = f" while writing {what}" if what else ""
        raise NoSpaceError(
            f"no space left on {directory}{doing}; the partial files were removed and earlier output is "
            "unchanged: free some space (or choose a path on another disk) and rerun"
        ) from None


def open_text(path: str | Path) -> IO[str]:
    """Open a UTF-8 text file for reading, transparently decompressing `.gz`."""
    p = Path(path)
    if p.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(p, "rb"), encoding="utf-8")
    return p.open(encoding="utf-8")


def open_binary(path: str | Path) -> IO[bytes]:
    """Open a file for reading bytes, transparently decompressing `.gz`."""
    p = Path(path)
    return gzip.open(p, "rb") if p.suffix == ".gz" else p.open("rb")


def iter_jsonl(
    path: str | Path,
    error: Callable[[int, str], Exception] | None = None,
    on_bad_line: Callable[[Exception], None] | None = None,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line of a JSONL file (`.gz` too), streamed.

    A line that is not UTF-8, not valid JSON or not a JSON object raises `error(line, message)`; the default
    is a `ValueError` reading `path:line: message`. With `on_bad_line`, that error is passed to it instead and
    reading goes on with the next line.
    """
    make_error = error or (lambda line, message: ValueError(f"{path}:{line}: {message}"))
    with open_binary(path) as handle:
        for line_no, raw in enumerate(handle, start=1):
            record, problem = _json_object(raw)
            if record is not None:
                yield line_no, record
            elif problem is not None and on_bad_line is None:
                raise make_error(line_no, problem)
            elif problem is not None and on_bad_line is not None:
                on_bad_line(make_error(line_no, problem))


def utf8_problem(line: bytes, offset: int) -> str:
    """The message for a `line` whose byte at `offset` is not UTF-8: that byte and its 1-based column."""
    return f"not valid UTF-8: byte 0x{line[offset]:02x} at column {offset + 1}; re-encode the file as UTF-8"


def _json_object(raw: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """(object, None) for a JSON-object line, (None, None) for a blank one, (None, the problem) otherwise."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, utf8_problem(raw, exc.start)
    if not line.strip():
        return None, None
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON: {exc.msg}"
    if not isinstance(record, dict):
        return None, f"expected a JSON object per line, got {type(record).__name__}"
    return record, None
