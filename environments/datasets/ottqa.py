"""OTT-QA loader: questions over tables and their linked Wikipedia passages.

Tables are serialized with WAPO F.2.1's parts (title, section title, introduction and the table in markdown),
the header and rows before the introduction so that a dense encoder reading only the first 256 tokens still
sees the columns and first rows. A question's task corpus is its table plus the passages its cells link to;
its `supporting_titles` are the table's title and the titles of the passages its answer nodes link to, each
once. `ottqa_corpus` builds the whole table-and-passage corpus for open retrieval. The tables and passages
files are found next to the questions file (the name with "questions" replaced by "tables" / "passages") or
given as the options `tables_path` / `passages_path`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from agentrl.core.types import Task
from environments.datasets.base import LoadContext, LoaderSpec, Record, read_file, register_loader
from retrievers.corpora import table_text as serialize_table

log = logging.getLogger(__name__)


def _cell(cell: Any) -> tuple[str, list[str]]:
    if isinstance(cell, list | tuple) and cell:
        links = cell[1] if len(cell) > 1 and isinstance(cell[1], list) else []
        return str(cell[0]), [str(x) for x in links]
    return str(cell), []


def table_links(table: dict[str, Any]) -> list[str]:
    """Passage ids linked from the table's cells, in order of first appearance."""
    links: list[str] = []
    for row in [table.get("header", []), *table.get("data", [])]:
        for cell in row:
            links.extend(_cell(cell)[1])
    return list(dict.fromkeys(links))


def passage_title(link: str) -> str:
    """ "/wiki/Foo_Bar" -> "Foo Bar"."""
    return unquote(link.rsplit("/", 1)[-1]).replace("_", " ")


def _table_doc(table: dict[str, Any]) -> dict[str, str]:
    return {
        "id": str(table.get("uid", table.get("title", ""))),
        "title": str(table.get("title", "")),
        "text": serialize_table(table),
    }


def _passage_doc(link: str, text: str) -> dict[str, str]:
    return {"id": link, "title": passage_title(link), "text": text}


def _sibling(path: Path, kind: str) -> Path | None:
    if "questions" not in path.name:
        return None
    candidate = path.with_name(path.name.replace("questions", kind))
    return candidate if candidate.exists() else None


def _read_keyed(path: Path, key: str) -> dict[str, dict[str, Any]]:
    return {str(r.data.get(key)): r.data for r in read_file(path)}


def _prepare(files: list[Path], ctx: LoadContext) -> None:
    tables_path = ctx.options.get("tables_path") or (_sibling(files[0], "tables") if files else None)
    passages_path = ctx.options.get("passages_path") or (_sibling(files[0], "passages") if files else None)
    ctx.state["tables"] = _read_keyed(Path(tables_path), "uid") if tables_path else {}
    ctx.state["passages"] = (
        {k: str(v.get("text", "")) for k, v in _read_keyed(Path(passages_path), "id").items()}
        if passages_path
        else {}
    )
    if not ctx.state["tables"]:
        log.warning("OTT-QA: no tables file found; tasks will have no corpus")


def _convert(record: Record, ctx: LoadContext) -> Task:
    question = record.require_text("question")
    answers = record.require_answers("answer-text", "answer_text", "answer")
    table_id = record.require_text("table_id")
    meta: dict[str, Any] = {"table_id": table_id, "answer_node": record.get("answer-node", [])}
    corpus = None
    table = ctx.state.get("tables", {}).get(table_id)
    if table is not None and ctx.options.get("include_corpus", True):
        passages = ctx.state.get("passages", {})
        corpus = [_table_doc(table)]
        corpus += [_passage_doc(link, passages[link]) for link in table_links(table) if link in passages]
        titles = [str(table.get("title", ""))] + [
            passage_title(str(node[2])) for node in meta["answer_node"] if len(node) > 2 and node[2]
        ]
        meta["supporting_titles"] = list(dict.fromkeys(titles))
    return Task(
        id=str(record.require("question_id")),
        question=question,
        answers=answers,
        dataset="ottqa",
        metadata=meta,
        corpus=corpus,
    )


def ottqa_corpus(tables_path: str | Path, passages_path: str | Path | None = None) -> list[dict[str, str]]:
    """The OTT-QA retrieval corpus: one document per table (serialized) and per linked passage."""
    docs = [_table_doc(r.data) for r in read_file(Path(tables_path))]
    if passages_path is not None:
        docs += [
            _passage_doc(str(r.data["id"]), str(r.data.get("text", "")))
            for r in read_file(Path(passages_path))
        ]
    return docs


def write_corpus_jsonl(documents: list[dict[str, str]], path: str | Path) -> None:
    """Write documents as `{"id", "title", "text"}` JSON lines."""
    with Path(path).open("w", encoding="utf-8") as handle:
        for doc in documents:
            handle.write(json.dumps(doc, ensure_ascii=False) + "\n")


register_loader(LoaderSpec("ottqa", _convert, patterns=("*questions*",), prepare=_prepare), "ott-qa")
