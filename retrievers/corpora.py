"""Streaming corpus readers: every format yields `Document(id, title, text)` one at a time.

Formats (names accepted by `--corpus-format`):
- `searchr1`: JSONL `{"id", "contents": "\"Title\"\\ntext"}` (Search-R1 / FlashRAG `wiki-18.jsonl`); a row
  that `{"id", "contents"}` rebuilt from title and text would not give back (another contents layout, more
  fields) is kept whole in `Document.record`, so the server can answer it as stored.
- `dpr`: TSV with a header `id<TAB>text<TAB>title` (DPR `psgs_w100.tsv`).
- `jsonl`, `parquet`: records with `id`, `text` and optionally `title`.
- `hotpotqa`, `2wiki`: question files; their context paragraphs become documents, deduplicated by title
  (id = title).
- `ottqa`: OTT-QA tables (`title`, `section_title`, `intro`, `header`, `data`) serialized as markdown, plus
  linked passages (`{"id": "/wiki/...", "text"}`); a directory or either file (the other is found beside it).

Bad input raises `CorpusFormatError` naming the file, line and field.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from agentrl.core.files import iter_jsonl, open_binary, open_text, utf8_problem
from agentrl.core.registry import Registry


@dataclass(frozen=True)
class Document:
    """One corpus document. `record` is its Search-R1 corpus row as JSON text, kept when `{"id", "contents"}`
    rebuilt from id, title and text would not give that row back (see `kept_record`); None otherwise."""

    id: str
    title: str
    text: str
    record: str | None = field(default=None, compare=False, repr=False)

    @property
    def contents(self) -> str:
        return f'"{self.title}"\n{self.text}'


class CorpusFormatError(ValueError):
    """A corpus record is malformed; the message names file, line and field."""

    def __init__(self, path: Path | str, line: int | None, message: str) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")


CorpusReader = Callable[[Path], Iterator[Document]]
CORPUS_FORMATS: Registry[CorpusReader] = Registry("corpus format")


def read_corpus(path: str | Path, fmt: str = "auto") -> Iterator[Document]:
    """Stream the documents of `path` in format `fmt` (`auto` detects it)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"corpus {path} does not exist")
    name = detect_format(path) if fmt == "auto" else fmt
    return CORPUS_FORMATS.get(name)(path)


def detect_format(path: Path) -> str:
    """Guess a corpus format from the file suffix and the fields of its first record."""
    if path.is_dir():
        if any(path.glob("*tables*.jsonl*")):
            return "ottqa"
        raise CorpusFormatError(path, None, "a directory corpus must hold OTT-QA *tables*.jsonl files")
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    suffix = suffixes[-1] if suffixes else ""
    if suffix in (".tsv", ".csv"):
        return "dpr"
    if suffix == ".parquet":
        return "parquet"
    for _, record in _jsonl_records(path):
        keys = set(record)
        if "contents" in keys:
            return "searchr1"
        if "context" in keys and "question" in keys:
            return "2wiki" if "evidences" in keys else "hotpotqa"
        if {"header", "data"} <= keys:
            return "ottqa"
        if "text" in keys and "id" in keys:
            return "jsonl"
        raise CorpusFormatError(path, 1, f"cannot tell the corpus format from fields {sorted(keys)}")
    raise CorpusFormatError(path, None, "file is empty")


def _jsonl_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    return utf8_checked(path, iter_jsonl(path, lambda line, message: CorpusFormatError(path, line, message)))


T = TypeVar("T")


def utf8_checked(path: Path, items: Iterator[T]) -> Iterator[T]:
    """`items` read from the text file `path`; bytes that are not UTF-8 raise `CorpusFormatError` naming the
    line and column, found by scanning the raw bytes once the decoder has failed."""
    try:
        yield from items
    except UnicodeDecodeError:
        line, message = _first_non_utf8(path)
        raise CorpusFormatError(path, line, message) from None


def _first_non_utf8(path: Path) -> tuple[int | None, str]:
    with open_binary(path) as handle:
        for line_no, raw in enumerate(handle, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                return line_no, utf8_problem(raw, exc.start)
    return None, "not valid UTF-8; re-encode the file as UTF-8"


def _field(record: dict[str, Any], name: str, path: Path, line: int, kind: type = str) -> Any:
    if name not in record:
        raise CorpusFormatError(path, line, f"missing field {name!r} (fields: {sorted(record)})")
    value = record[name]
    if kind is str and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, kind):
        raise CorpusFormatError(
            path, line, f"field {name!r} must be {kind.__name__}, got {type(value).__name__}"
        )
    return value


def split_contents(contents: str) -> tuple[str, str]:
    """Split Search-R1 `"Title"\\ntext` into (title, text); a first line without quotes is still the title."""
    head, _, body = contents.partition("\n")
    title = head.strip()
    if len(title) >= 2 and title[0] == '"' and title[-1] == '"':
        title = title[1:-1]
    return title, body


def kept_record(record: dict[str, Any], doc_id: str, title: str, text: str) -> str | None:
    """A Search-R1 row as JSON text, or None when it is exactly `{"id": doc_id, "contents": '"title"\\ntext'}`
    (fields in that order), which can be rebuilt from the document instead of stored."""
    if list(record.items()) == [("id", doc_id), ("contents", f'"{title}"\n{text}')]:
        return None
    return json.dumps(record, ensure_ascii=False)


@CORPUS_FORMATS.register("searchr1", "flashrag")
def read_searchr1(path: Path) -> Iterator[Document]:
    for line, record in _jsonl_records(path):
        doc_id = _field(record, "id", path, line)
        title, text = split_contents(_field(record, "contents", path, line))
        yield Document(doc_id, title, text, kept_record(record, doc_id, title, text))


@CORPUS_FORMATS.register("jsonl")
def read_jsonl(path: Path) -> Iterator[Document]:
    for line, record in _jsonl_records(path):
        title = record.get("title") or ""
        if not isinstance(title, str):
            raise CorpusFormatError(path, line, f"field 'title' must be str, got {type(title).__name__}")
        yield Document(_field(record, "id", path, line), title, _field(record, "text", path, line))


@CORPUS_FORMATS.register("dpr", "tsv")
def read_dpr(path: Path) -> Iterator[Document]:
    return utf8_checked(path, _dpr_documents(path))


def _dpr_documents(path: Path) -> Iterator[Document]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with open_text(path) as handle:
        rows = csv.reader(handle, delimiter="\t")
        header = next(rows, None)
        if header is None:
            raise CorpusFormatError(path, None, "file is empty")
        columns = {name.strip(): i for i, name in enumerate(header)}
        for name in ("id", "text"):
            if name not in columns:
                raise CorpusFormatError(path, 1, f"header lacks column {name!r} (has {header})")
        title_col = columns.get("title")
        for lineno, row in enumerate(rows, start=2):
            if len(row) < len(header):
                raise CorpusFormatError(path, lineno, f"expected {len(header)} columns, got {len(row)}")
            title = row[title_col] if title_col is not None else ""
            yield Document(row[columns["id"]], title, row[columns["text"]])


@CORPUS_FORMATS.register("parquet")
def read_parquet(path: Path, batch_size: int = 8192) -> Iterator[Document]:
    import pyarrow.parquet as pq

    handle = pq.ParquetFile(path)
    names = set(handle.schema_arrow.names)
    for name in ("id", "text"):
        if name not in names:
            raise CorpusFormatError(path, None, f"missing column {name!r} (columns: {sorted(names)})")
    columns = ["id", "text"] + (["title"] if "title" in names else [])
    row = 0
    for batch in handle.iter_batches(batch_size=batch_size, columns=columns):
        data = batch.to_pydict()
        titles = data.get("title") or [""] * batch.num_rows
        for doc_id, text, title in zip(data["id"], data["text"], titles, strict=True):
            row += 1
            if text is None or doc_id is None:
                raise CorpusFormatError(path, row, "null 'id' or 'text' (row number within the file)")
            yield Document(str(doc_id), title or "", text)


def join_sentences(sentences: list[str]) -> str:
    """Join sentences keeping HotpotQA's own leading spaces and adding one where a sentence has none."""
    parts: list[str] = []
    for sentence in sentences:
        if parts and sentence and not sentence[0].isspace() and not parts[-1][-1:].isspace():
            parts.append(" ")
        parts.append(sentence)
    return "".join(parts).strip()


def question_paragraphs(record: dict[str, Any], path: Path, line: int) -> list[tuple[str, list[str]]]:
    """(title, sentences) of a HotpotQA / 2Wiki record's context, in the HF dict or the official list form."""
    context = record.get("context")
    if isinstance(context, dict):
        titles, sentences = context.get("title"), context.get("sentences")
        if not isinstance(titles, list) or not isinstance(sentences, list) or len(titles) != len(sentences):
            raise CorpusFormatError(
                path, line, "field 'context' must hold equal-length 'title'/'sentences' lists"
            )
        return list(zip(titles, sentences, strict=True))
    if isinstance(context, list):
        out = []
        for i, item in enumerate(context):
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[1], list)):
                raise CorpusFormatError(path, line, f"field 'context[{i}]' must be [title, [sentences]]")
            out.append((item[0], item[1]))
        return out
    raise CorpusFormatError(path, line, "missing field 'context' (dict or list of [title, sentences])")


@CORPUS_FORMATS.register("hotpotqa", "2wiki", "2wikimultihopqa")
def read_question_contexts(path: Path) -> Iterator[Document]:
    seen: set[str] = set()
    for line, record in _jsonl_records(path):
        for title, sentences in question_paragraphs(record, path, line):
            if title in seen:
                continue
            seen.add(title)
            yield Document(str(title), str(title), join_sentences([str(s) for s in sentences]))


def _cell(cell: Any) -> str:
    text = cell[0] if isinstance(cell, list | tuple) and cell else cell
    return str(text).replace("|", "\\|").replace("\n", " ").strip()


def table_text(table: dict[str, Any]) -> str:
    """An OTT-QA table as text: section title, markdown table (header, separator, rows), then the introduction
    and section text (the table's title is the document title).

    The header and rows come before the introduction, which is often longer than an encoder's window (256
    tokens for MiniLM): placed first, it pushed the header and every cell out of what a dense index encodes.
    """
    lines = [f"Section: {str(table['section_title']).strip()}"] if table.get("section_title") else []
    header = table.get("header") or []
    if header:
        lines += ["| " + " | ".join(_cell(c) for c in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in table.get("data") or []]
    prose = [str(table.get(key) or "").strip() for key in ("intro", "section_text")]
    return "\n\n".join(part for part in ("\n".join(lines), *prose) if part)


def serialize_table(record: dict[str, Any], path: Path, line: int) -> Document:
    """An OTT-QA table record as a `Document` (text from `table_text`), its fields checked first."""
    title = _field(record, "title", path, line)
    _field(record, "header", path, line, list)
    for i, row in enumerate(_field(record, "data", path, line, list)):
        if not isinstance(row, list):
            raise CorpusFormatError(path, line, f"field 'data[{i}]' must be a list of cells")
    doc_id = record.get("uid") or record.get("table_id") or title
    return Document(str(doc_id), title, table_text(record))


def wiki_link_title(link: str) -> str:
    """`/wiki/Cartier_Field` -> `Cartier Field`."""
    return link.rsplit("/wiki/", 1)[-1].replace("_", " ")


@CORPUS_FORMATS.register("ottqa")
def read_ottqa(path: Path) -> Iterator[Document]:
    for file in _ottqa_files(path):
        for line, record in _jsonl_records(file):
            if "header" in record or "data" in record:
                yield serialize_table(record, file, line)
            else:
                doc_id = _field(record, "id", file, line)
                yield Document(doc_id, wiki_link_title(doc_id), _field(record, "text", file, line))


def _ottqa_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(path.glob("*tables*.jsonl*")) + sorted(path.glob("*passages*.jsonl*"))
    elif "tables" in path.name:
        files = [path, *sorted(path.parent.glob(path.name.replace("tables", "passages")))]
    elif "passages" in path.name:
        files = [*sorted(path.parent.glob(path.name.replace("passages", "tables"))), path]
    else:
        files = [path]
    if not files:
        raise CorpusFormatError(path, None, "no OTT-QA *tables*.jsonl or *passages*.jsonl files found")
    return files
