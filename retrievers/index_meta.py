"""The `meta.json` of an index directory and atomic file writes.

An index directory is finished when its `meta.json` exists: builds write it last, inside a temporary directory
that is then renamed into place.

Layout:
    meta.json      kind, number of documents, corpus, encoder spec, dense/BM25 settings
    docs.sqlite    the document store (`retrievers.docstore`)
    dense.faiss    the FAISS index (dense and hybrid)
    bm25/          the bm25s index (bm25 and hybrid)
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from agentrl.core.files import atomic_open

META_FILE = "meta.json"
DOCS_FILE = "docs.sqlite"
FAISS_FILE = "dense.faiss"
BM25_DIR = "bm25"
FORMAT = "agentrl-index"
VERSION = 1


def write_json_atomic(path: Path, data: Any) -> None:
    """Write `data` as JSON to a temporary file beside `path`, fsync it and rename it over `path`."""
    with atomic_open(path) as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.write("\n")


def meta_header(kind: str, num_docs: int, corpus: Path, corpus_format: str) -> dict[str, Any]:
    """The fields every `meta.json` starts with: format and version, index kind, document count, the corpus
    it was made from and when."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "kind": kind,
        "num_docs": num_docs,
        "corpus": {"path": str(corpus.resolve()), "format": corpus_format},
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def read_meta(index_dir: str | Path) -> dict[str, Any]:
    """The metadata of a finished index; clear errors for missing, unfinished or foreign directories."""
    index_dir = Path(index_dir)
    path = index_dir / META_FILE
    partial = index_dir.parent / f".{index_dir.name}.partial"
    hint = (
        f"; an unfinished build is in {partial}, rerun `agentrl index build` to resume it"
        if partial.exists()
        else ""
    )
    if not index_dir.is_dir():
        raise FileNotFoundError(f"index directory {index_dir} does not exist{hint}")
    if not path.exists():
        raise FileNotFoundError(f"{index_dir} is not a finished index: {META_FILE} is missing{hint}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{path} is not UTF-8 text (byte {exc.start}: {exc.reason}), so not index metadata; rebuild the "
            "index with `agentrl index build ... --overwrite` (or `agentrl index import`)"
        ) from None
    if not isinstance(meta, dict):
        raise ValueError(
            f"{path}: must hold a JSON object (the index metadata), got a JSON {_json_kind(meta)}; "
            "rebuild the index with `agentrl index build` (or `agentrl index import`)"
        )
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: field 'format' must be {FORMAT!r}, got {meta.get('format')!r}")
    if int(meta.get("version", 0)) > VERSION:
        raise ValueError(f"{path}: index version {meta['version']} is newer than this agentrl ({VERSION})")
    return meta


def _json_kind(value: Any) -> str:
    """The JSON name of a decoded value's type: array, string, number, boolean or null."""
    kinds = {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)
