"""Multi-hop and open-domain QA loaders: HotpotQA (distractor, fullwiki), 2WikiMultihopQA and NQ-open.

HotpotQA and 2Wiki records come in two layouts, both accepted: the official one (`context` as
`[[title, [sentences]]]`, `supporting_facts` as `[[title, sent_id]]`, id `_id`) and the Hugging Face one
(`context` as `{"title": [...], "sentences": [...]}`, `supporting_facts` as `{"title": [...], "sent_id":
[...]}`, id `id`). The context paragraphs become the task's own `corpus` (one document per paragraph) unless
the load option `include_corpus=False` is given (the default for fullwiki, where retrieval is open).
"""

from __future__ import annotations

import hashlib
from typing import Any

from agentrl.core.types import Task
from environments.datasets.base import LoadContext, LoaderSpec, Record, register_loader


def _pairs(value: Any, record: Record, field: str, keys: tuple[str, str]) -> list[tuple[Any, Any]]:
    """The (first, second) pairs of a field given as [[a, b], ...] (official layout) or {keys[0]: [a, ...],
    keys[1]: [b, ...]} (Hugging Face layout); a RecordError naming the field and index otherwise."""
    if isinstance(value, dict):
        firsts, seconds = value.get(keys[0]), value.get(keys[1])
        if not isinstance(firsts, list) or not isinstance(seconds, list) or len(firsts) != len(seconds):
            raise record.error(field, f"must hold two lists of equal length, {keys[0]!r} and {keys[1]!r}")
        return list(zip(firsts, seconds, strict=True))
    if not isinstance(value, list):
        raise record.error(field, f"must be [[{keys[0]}, {keys[1]}], ...] or {{{keys[0]}, {keys[1]}}}")
    for i, item in enumerate(value):
        if not isinstance(item, list | tuple) or len(item) != 2:
            raise record.error(f"{field}[{i}]", f"must be a pair [{keys[0]}, {keys[1]}], got {item!r:.80}")
    return [(a, b) for a, b in value]


def _paragraphs(context: Any, record: Record) -> list[tuple[str, list[str]]]:
    paragraphs = []
    for i, (title, sentences) in enumerate(_pairs(context, record, "context", ("title", "sentences"))):
        if not isinstance(sentences, list) or not all(isinstance(s, str) for s in sentences):
            raise record.error(f"context[{i}]", "must list its sentences as strings")
        paragraphs.append((str(title), sentences))
    return paragraphs


def _sent_id(value: Any, record: Record, field: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    raise record.error(field, f"sent_id must be an integer, got {value!r:.80}")


def _supporting_facts(facts: Any, record: Record) -> list[list[Any]]:
    pairs = _pairs(facts, record, "supporting_facts", ("title", "sent_id"))
    return [[str(t), _sent_id(s, record, f"supporting_facts[{i}]")] for i, (t, s) in enumerate(pairs)]


def _question_id(record: Record, prefix: str, question: str) -> str:
    uid = record.get("id", record.get("_id"))
    if uid is not None:
        return str(uid)
    return f"{prefix}-{hashlib.sha1(question.encode('utf-8')).hexdigest()[:16]}"


def _multihop(dataset: str, default_corpus: bool) -> Any:
    def convert(record: Record, ctx: LoadContext) -> Task:
        question = record.require_text("question")
        answers = record.require_answers("answer")
        task_id = _question_id(record, dataset, question)
        facts = _supporting_facts(record.get("supporting_facts", []), record)
        meta: dict[str, Any] = {
            "type": record.get("type"),
            "level": record.get("level"),
            "supporting_titles": list(dict.fromkeys(title for title, _ in facts)),
            "supporting_facts": facts,
        }
        meta = {k: v for k, v in meta.items() if v is not None}
        if "evidence" in record.data:
            meta["evidence"] = record.data["evidence"]
        if "evidences" in record.data:
            meta["evidences"] = record.data["evidences"]
        corpus = None
        include = ctx.options.get(
            "include_corpus", default_corpus and ctx.options.get("setting") != "fullwiki"
        )
        if include and record.get("context"):
            corpus = [
                {"id": f"{task_id}-{i}", "title": title, "text": " ".join(s.strip() for s in sentences)}
                for i, (title, sentences) in enumerate(_paragraphs(record.data["context"], record))
            ]
        return Task(
            id=task_id, question=question, answers=answers, dataset=dataset, metadata=meta, corpus=corpus
        )

    return convert


def _nq_open(record: Record, ctx: LoadContext) -> Task:
    question = record.require_text("question")
    answers = record.require_answers("answer", "answers")
    return Task(
        id=_question_id(record, "nq", question), question=question, answers=answers, dataset="nq_open"
    )


register_loader(
    LoaderSpec("hotpotqa", _multihop("hotpotqa", True), hf_path="hotpotqa/hotpot_qa", hf_config="distractor"),
    "hotpot_qa",
)
register_loader(LoaderSpec("2wikimultihopqa", _multihop("2wikimultihopqa", True)), "2wiki")
register_loader(
    LoaderSpec("nq_open", _nq_open, hf_path="google-research-datasets/nq_open", hf_config="nq_open"), "nq"
)
