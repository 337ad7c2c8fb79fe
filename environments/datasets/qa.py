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

from agentrl.types import Task
from environments.datasets.base import LoadContext, LoaderSpec, Record, RecordError, register_loader


def _paragraphs(context: Any, record: Record) -> list[tuple[str, list[str]]]:
    if isinstance(context, dict):
        titles, sentences = context.get("title", []), context.get("sentences", [])
        return [(str(t), list(s)) for t, s in zip(titles, sentences, strict=False)]
    if isinstance(context, list):
        try:
            return [(str(t), list(s)) for t, s in context]
        except (TypeError, ValueError):
            pass
    raise RecordError(
        f"{record.where()}: field 'context' is neither [[title, sentences]] nor {{title, sentences}}"
    )


def _supporting_titles(facts: Any) -> list[str]:
    titles = facts.get("title", []) if isinstance(facts, dict) else [f[0] for f in facts or []]
    return list(dict.fromkeys(str(t) for t in titles))


def _supporting_facts(facts: Any) -> list[list[Any]]:
    if isinstance(facts, dict):
        return [
            [str(t), int(s)] for t, s in zip(facts.get("title", []), facts.get("sent_id", []), strict=False)
        ]
    return [[str(f[0]), int(f[1])] for f in facts or []]


def _question_id(record: Record, prefix: str, question: str) -> str:
    uid = record.get("id", record.get("_id"))
    if uid is not None:
        return str(uid)
    return f"{prefix}-{hashlib.sha1(question.encode('utf-8')).hexdigest()[:16]}"


def _multihop(dataset: str, default_corpus: bool) -> Any:
    def convert(record: Record, ctx: LoadContext) -> Task:
        question = str(record.require("question"))
        answer = record.require("answer")
        task_id = _question_id(record, dataset, question)
        facts = record.get("supporting_facts", [])
        meta: dict[str, Any] = {
            "type": record.get("type"),
            "level": record.get("level"),
            "supporting_titles": _supporting_titles(facts),
            "supporting_facts": _supporting_facts(facts),
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
        answers = [str(a) for a in answer] if isinstance(answer, list) else [str(answer)]
        return Task(
            id=task_id, question=question, answers=answers, dataset=dataset, metadata=meta, corpus=corpus
        )

    return convert


def _nq_open(record: Record, ctx: LoadContext) -> Task:
    question = str(record.require("question"))
    answer = record.require("answer", "answers")
    answers = [str(a) for a in answer] if isinstance(answer, list) else [str(answer)]
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
