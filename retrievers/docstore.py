"""An on-disk document store (sqlite3): documents fetched by integer row or by id, never held in a dict.

Row numbers are the positions of the documents in the corpus stream, 0-based; they are the ids stored in the
FAISS index and the BM25 matrix, so `get_rows(index_result_rows)` maps search results back to documents.
A document's `record` (its corpus row as JSON text, where the corpus reader kept one) is stored beside it; a
store written before that column existed reads back with `record` None.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from retrievers.corpora import Document
from retrievers.index_meta import read_meta

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS docs "
    "(row INTEGER PRIMARY KEY, id TEXT NOT NULL, title TEXT, text TEXT, record TEXT)"
)
_BATCH = 5000


class DocStoreError(ValueError):
    """A document store that sqlite cannot read (truncated, overwritten, or not written by agentrl)."""

    def __init__(self, path: Path, error: sqlite3.Error) -> None:
        super().__init__(
            f"{path} is not a readable document store: {error} (truncated or corrupt?); rebuild the index "
            f"with {rebuild_command(path.parent)}"
        )
        self.path = path


def rebuild_command(index_dir: Path) -> str:
    """The `agentrl index build` command that remakes `index_dir`, with the corpus its meta.json names."""
    corpus = "CORPUS"
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        corpus = str(read_meta(index_dir)["corpus"]["path"])
    return f"`agentrl index build --corpus {corpus} --out {index_dir} --overwrite`"


class DocStoreWriter:
    """Append documents to a fresh store; duplicate ids are reported with the id and both row numbers."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.exists():
            self.path.unlink()
        self._conn = sqlite3.connect(self.path)
        self._conn.execute("PRAGMA journal_mode=OFF")
        self._conn.execute("PRAGMA synchronous=OFF")
        self._conn.execute(_SCHEMA)
        self._pending: list[tuple[int, str, str, str, str | None]] = []
        self.count = 0

    def add(self, doc: Document) -> int:
        row = self.count
        self._pending.append((row, doc.id, doc.title, doc.text, doc.record))
        self.count += 1
        if len(self._pending) >= _BATCH:
            self._flush()
        return row

    def add_all(self, docs: Iterable[Document]) -> int:
        for doc in docs:
            self.add(doc)
        return self.count

    def _flush(self) -> None:
        self._conn.executemany("INSERT INTO docs VALUES (?, ?, ?, ?, ?)", self._pending)
        self._pending.clear()

    def close(self) -> None:
        """Flush, index ids (checking they are unique) and close."""
        self._flush()
        duplicate = self._conn.execute(
            "SELECT id, MIN(row), MAX(row) FROM docs GROUP BY id HAVING COUNT(*) > 1 LIMIT 1"
        ).fetchone()
        if duplicate:
            self._conn.close()
            raise ValueError(
                f"document id {duplicate[0]!r} occurs more than once (documents {duplicate[1]} and "
                f"{duplicate[2]}, counting from 0); ids must be unique"
            )
        self._conn.execute("CREATE UNIQUE INDEX IF NOT EXISTS docs_id ON docs(id)")
        self._conn.commit()
        self._conn.close()


class DocStore:
    """Read-only access to a store written by `DocStoreWriter`; safe to share between threads.

    A file sqlite cannot read raises DocStoreError, on opening or on the first query that meets the damage.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"document store {self.path} does not exist")
        self._conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
        self._lock = threading.Lock()
        try:
            with self._reading():
                self._size = int(self._conn.execute("SELECT COUNT(*) FROM docs").fetchone()[0])
                columns = {info[1] for info in self._conn.execute("PRAGMA table_info(docs)")}
        except DocStoreError:
            self._conn.close()
            raise
        self._fields = "id, title, text, " + ("record" if "record" in columns else "NULL")

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        """Hold the lock; sqlite errors become DocStoreError naming the file."""
        with self._lock:
            try:
                yield
            except sqlite3.DatabaseError as exc:
                raise DocStoreError(self.path, exc) from None

    def __len__(self) -> int:
        return self._size

    def get_rows(self, rows: Sequence[int]) -> list[Document]:
        """Documents at `rows`, in that order (rows may repeat)."""
        unique = sorted({int(r) for r in rows})
        if not unique:
            return []
        found: dict[int, Document] = {}
        with self._reading():
            for start in range(0, len(unique), 900):
                chunk = unique[start : start + 900]
                marks = ",".join("?" * len(chunk))
                query = f"SELECT row, {self._fields} FROM docs WHERE row IN ({marks})"
                for row, *fields in self._conn.execute(query, chunk):
                    found[row] = _document(fields)
        missing = [r for r in unique if r not in found]
        if missing:
            raise KeyError(
                f"rows {missing[:5]} are not in document store {self.path} ({self._size} documents)"
            )
        return [found[int(r)] for r in rows]

    def get_ids(self, ids: Sequence[str]) -> list[Document | None]:
        """Documents with `ids`, None where an id is unknown."""
        out: list[Document | None] = []
        with self._reading():
            for doc_id in ids:
                hit = self._conn.execute(
                    f"SELECT {self._fields} FROM docs WHERE id = ?", (doc_id,)
                ).fetchone()
                out.append(_document(hit) if hit else None)
        return out

    def iter_range(self, start: int = 0, stop: int | None = None, batch: int = _BATCH) -> Iterator[Document]:
        """Documents with `start <= row < stop`, streamed in row order."""
        stop = self._size if stop is None else min(stop, self._size)
        for lo in range(start, stop, batch):
            hi = min(lo + batch, stop)
            with self._reading():
                rows = self._conn.execute(
                    f"SELECT {self._fields} FROM docs WHERE row >= ? AND row < ? ORDER BY row", (lo, hi)
                ).fetchall()
            for fields in rows:
                yield _document(fields)

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _document(fields: Sequence[str | None]) -> Document:
    """A `Document` from the (id, title, text, record) columns of one row."""
    doc_id, title, text, record = fields
    return Document(str(doc_id), title or "", text or "", record)
