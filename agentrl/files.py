"""Atomic file writes: a file is either its old self or completely written, never half of each."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
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
