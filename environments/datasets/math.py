"""Math dataset loaders: MATH-500, NuminaMath (with WAPO's F.1.2 filter), GSM8K, AIME and AMC."""

from __future__ import annotations

import random
import re

from agentrl.core.types import Task
from environments.datasets.base import LoadContext, LoaderSpec, Record, register_loader

NUMERIC_ANSWER = re.compile(r"-?\d+(?:\.\d+)?|-?\d+/\d+")
NUMINA_QUESTION_TYPES = ("math-word-problem", "multiple-choice-question", "MCQ")


def _text(value: object) -> str:
    """Answers may be stored as numbers ("142.0" / 142.0 for AMC): integral floats become integers."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    if re.fullmatch(r"-?\d+\.0+", text):
        return text.split(".")[0]
    return text


def _math500(record: Record, ctx: LoadContext) -> Task:
    problem = record.require_text("problem")
    answer = record.require_text("answer")
    uid = record.get("unique_id") or f"math500-{record.line}"
    meta = {k: record.data[k] for k in ("subject", "level", "solution") if k in record.data}
    return Task(id=str(uid), question=str(problem), answers=[_text(answer)], dataset="math500", metadata=meta)


def _competition(dataset: str) -> LoaderSpec:
    def convert(record: Record, ctx: LoadContext) -> Task:
        problem = record.require_text("problem", "question")
        answer = record.require_text("answer")
        url = record.get("url")
        uid = "/".join(str(url).rsplit("/", 2)[-2:]) if url else str(record.get("id", record.line))
        meta = {k: record.data[k] for k in ("url", "competition", "problem_idx") if k in record.data}
        meta["source_file"] = record.source.rsplit("/", 1)[-1]
        return Task(
            id=f"{dataset}-{uid}",
            question=str(problem),
            answers=[_text(answer)],
            dataset=dataset,
            metadata=meta,
        )

    return LoaderSpec(
        name=dataset,
        convert=convert,
        hf_path="HuggingFaceH4/aime_2024" if dataset == "aime" else "AI-MO/aimo-validation-amc",
        patterns=(f"*{dataset}*.jsonl", f"*{dataset}*.json", f"*{dataset}*.parquet"),
    )


def _gsm8k(record: Record, ctx: LoadContext) -> Task:
    question = record.require_text("question")
    solution = record.require_text("answer")
    final = solution.rsplit("####", 1)[-1].strip().replace(",", "")
    if not final:
        raise record.error("answer", "has no final answer after '####'")
    return Task(
        id=str(record.get("id", f"gsm8k-{record.line}")),
        question=str(question),
        answers=[final],
        dataset="gsm8k",
        metadata={"solution": solution},
    )


def is_plain_numeric(answer: str) -> bool:
    """WAPO's NuminaMath answer filter: an integer, decimal or plain fraction (3, -2, 4.5, 7/8, "$7/8$")."""
    text = answer.strip()
    if len(text) > 2 and text.startswith("$") and text.endswith("$"):
        text = text[1:-1].strip()
    return NUMERIC_ANSWER.fullmatch(text) is not None


def _numinamath(record: Record, ctx: LoadContext) -> Task | None:
    types = tuple(ctx.options.get("question_types", NUMINA_QUESTION_TYPES))
    if record.get("question_type") not in types:
        return None
    problem, answer = str(record.get("problem", "")).strip(), str(record.get("answer", "")).strip()
    if not problem or not answer or not is_plain_numeric(answer):
        return None
    answer = answer.strip("$").strip()
    uid = record.get("uuid", record.get("id", f"{record.line}"))
    meta = {k: record.data[k] for k in ("question_type", "problem_type", "source") if k in record.data}
    return Task(
        id=f"numinamath-{uid}", question=problem, answers=[answer], dataset="numinamath", metadata=meta
    )


def _numinamath_split(tasks: list[Task], ctx: LoadContext) -> list[Task]:
    """Seeded shuffle, then the first `eval_size` (1000) tasks are the eval split and the rest train."""
    seed = int(ctx.options.get("seed", 0))
    eval_size = int(ctx.options.get("eval_size", 1000))
    shuffled = sorted(tasks, key=lambda t: t.id)
    random.Random(seed).shuffle(shuffled)
    if ctx.split in ("test", "eval", "validation"):
        return shuffled[:eval_size]
    if ctx.split == "train":
        return shuffled[eval_size:]
    if ctx.split == "all":
        return shuffled
    raise ValueError(f"numinamath split must be 'eval' (or 'test'), 'train' or 'all', got {ctx.split!r}")


register_loader(
    LoaderSpec("math500", _math500, hf_path="HuggingFaceH4/MATH-500", patterns=("*math500*",)), "math-500"
)
register_loader(_competition("aime"))
register_loader(_competition("amc"))
register_loader(LoaderSpec("gsm8k", _gsm8k, hf_path="openai/gsm8k", hf_config="main", patterns=("*gsm8k*",)))
register_loader(
    LoaderSpec(
        "numinamath",
        _numinamath,
        hf_path="AI-MO/NuminaMath-LEAN",
        patterns=("*numina*",),
        finalize=_numinamath_split,
        split_by_file_name=False,
    ),
    "numinamath-lean",
)
