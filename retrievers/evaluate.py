"""Recall of gold supporting titles for HotpotQA / 2WikiMultihopQA question files.

recall@k = mean over questions of |gold titles among the titles of the top k hits| / |gold titles|, where the
gold titles are the distinct titles in the question's `supporting_facts` and the query is the question text.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retrievers.base import Retriever
from retrievers.corpora import CorpusFormatError

DEFAULT_KS = (1, 3, 10)


@dataclass(frozen=True)
class GoldQuestion:
    id: str
    question: str
    titles: frozenset[str]


def supporting_titles(record: dict[str, Any], path: Path, line: int) -> frozenset[str]:
    """Distinct titles of `supporting_facts`, in the HF dict form or the official `[[title, sent]]` form."""
    facts = record.get("supporting_facts")
    if isinstance(facts, dict) and isinstance(facts.get("title"), list):
        return frozenset(str(t) for t in facts["title"])
    if isinstance(facts, list) and all(isinstance(f, list) and f for f in facts):
        return frozenset(str(f[0]) for f in facts)
    raise CorpusFormatError(
        path, line, "field 'supporting_facts' must be {'title': [...]} or [[title, sent_id]]"
    )


def read_questions(path: str | Path, limit: int | None = None) -> Iterator[GoldQuestion]:
    """Questions with their gold titles from a HotpotQA or 2Wiki JSONL (or JSON list) file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"questions file {path} does not exist")
    for count, (line, record) in enumerate(_records(path)):
        if limit is not None and count >= limit:
            return
        question = record.get("question")
        if not isinstance(question, str):
            raise CorpusFormatError(path, line, "missing string field 'question'")
        qid = str(record.get("id", record.get("_id", line)))
        yield GoldQuestion(qid, question, supporting_titles(record, path, line))


def _records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        yield from enumerate(json.loads(text), start=1)
        return
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as exc:
                raise CorpusFormatError(path, lineno, f"invalid JSON: {exc.msg}") from None


def recall_at_k(
    retriever: Retriever,
    questions: Sequence[GoldQuestion],
    ks: Sequence[int] = DEFAULT_KS,
    batch_size: int = 64,
) -> dict[str, float]:
    """`{"recall@1": ..., "recall@3": ..., "recall@10": ..., "num_questions": n}` for `retriever`."""
    top = max(ks)
    totals = dict.fromkeys(ks, 0.0)
    counted = 0
    for start in range(0, len(questions), batch_size):
        batch = questions[start : start + batch_size]
        results = retriever.search([q.question for q in batch], top)
        for question, hits in zip(batch, results, strict=True):
            if not question.titles:
                continue
            counted += 1
            for k in ks:
                found = {h.title for h in hits[:k]} & question.titles
                totals[k] += len(found) / len(question.titles)
    report: dict[str, float] = {f"recall@{k}": (totals[k] / counted if counted else 0.0) for k in ks}
    report["num_questions"] = counted
    return report
