"""Dataset loaders on the real samples in ../shared/data and on small files in the documented formats."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path
from typing import Any

import pytest

from agentrl.core.types import Task
from environments.datasets import (
    LOADERS,
    DatasetError,
    RecordError,
    iter_tasks,
    load_tasks,
    load_tasks_with_report,
    ottqa_corpus,
    serialize_table,
    write_searchr1_parquet,
)
from environments.datasets.math import is_plain_numeric
from tests.conftest import requires_minilm

# (loader, path under the data dir, expected task count); a directory of several files is read whole
SAMPLES = [
    ("math500", "math500/math500_test.public.jsonl", 350),
    ("aime", "aime", 21 + 21 + 42),
    ("amc", "aime/aimo_validation_amc_2022_2023.public.jsonl", 58),
    ("hotpotqa", "hotpotqa/hotpotqa_dev_distractor.public.jsonl", 770),
    ("hotpotqa", "hotpotqa/hotpotqa_train_sample.public.jsonl", 70),
    ("hotpotqa", "hotpotqa/hotpotqa_train_sample_ecm.public.jsonl", 350),
    ("2wikimultihopqa", "2wikimultihopqa/2wikimultihopqa_dev.public.jsonl", 350),
    ("nq_open", "nq_open/nq_open_dev.public.jsonl", 2527),
    ("ottqa", "ottqa/ottqa_dev_questions.public.jsonl", 1545),
]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize(("name", "relpath", "count"), SAMPLES)
def test_reads_every_sample(data_dir: Path, name: str, relpath: str, count: int) -> None:
    path = data_dir / relpath
    tasks, report = load_tasks_with_report(name, path, split="all" if path.is_dir() else "test")
    assert report.tasks == report.records == len(tasks) == count
    assert report.skipped == report.filtered == 0 and str(count) in report.summary()
    assert len({t.id for t in tasks}) == count
    for task in tasks:
        assert isinstance(task, Task) and task.question and task.answers and all(task.answers)
        json.dumps(task.to_dict())


def test_directory_is_read_by_split(data_dir: Path) -> None:
    with pytest.raises(DatasetError, match=r"3 data files in .*_ecm.* split 'test'.*'dev'"):
        load_tasks("hotpotqa", data_dir / "hotpotqa")
    for split in ("dev", "validation"):
        _, report = load_tasks_with_report("hotpotqa", data_dir / "hotpotqa", split=split)
        assert [Path(s).name for s in report.sources] == ["hotpotqa_dev_distractor.public.jsonl"]
        assert report.tasks == 770
    _, report = load_tasks_with_report("hotpotqa", data_dir / "hotpotqa", split="train")
    assert report.tasks == 70 + 350 and "hotpotqa_train_sample_ecm.public.jsonl" in report.summary()
    _, report = load_tasks_with_report("hotpotqa", data_dir / "hotpotqa", split="all")
    assert len(report.sources) == 3 and report.tasks == 770 + 70 + 350
    _, report = load_tasks_with_report("amc", data_dir / "aime")
    assert len(report.sources) == 1 and report.tasks == 58


def test_hotpotqa_fields(data_dir: Path) -> None:
    task = load_tasks("hotpotqa", data_dir / "hotpotqa" / "hotpotqa_dev_distractor.public.jsonl", limit=1)[0]
    assert task.id == "5a7fb7985542994857a767d2" and task.answers == ["Claudio Javier López"]
    assert task.metadata["supporting_titles"] == ["1998–99 Valencia CF season", "Claudio López (footballer)"]
    assert task.corpus is not None and len(task.corpus) == 10
    assert task.corpus[0]["title"] == "1998–99 Valencia CF season" and "  " not in task.corpus[0]["text"]
    official = load_tasks("hotpotqa", data_dir / "hotpotqa" / "hotpotqa_train_sample.public.jsonl", limit=1)[
        0
    ]
    assert official.corpus and official.metadata["supporting_titles"]
    fullwiki = load_tasks("hotpotqa", data_dir / "hotpotqa", split="dev", setting="fullwiki", limit=1)[0]
    assert fullwiki.corpus is None
    ecm = load_tasks("hotpotqa", data_dir / "hotpotqa" / "hotpotqa_train_sample_ecm.public.jsonl", limit=1)[0]
    assert ecm.id.startswith("hotpotqa-") and ecm.metadata["evidence"]


def test_math_answers_normalized(data_dir: Path) -> None:
    amc = load_tasks("amc", data_dir / "aime" / "aimo_validation_amc_2022_2023.public.jsonl")
    assert amc[0].answers == ["144"]
    math500 = load_tasks("math500", data_dir / "math500", limit=1)[0]
    assert math500.id == "test/algebra/2584.json" and math500.answers == ["\\frac{14}{3}"]


def test_ottqa_tables_and_passages(data_dir: Path) -> None:
    task = load_tasks("ottqa", data_dir / "ottqa", limit=1)[0]
    assert task.answers == ["Lynda La Plante"] and task.metadata["table_id"] == "Nonso_Anozie_1"
    assert task.corpus is not None and task.corpus[0]["title"] == "Nonso Anozie"
    assert "| " in task.corpus[0]["text"] and any(d["title"] == "Prime Suspect" for d in task.corpus)
    corpus = ottqa_corpus(data_dir / "ottqa" / "ottqa_dev_tables.public.jsonl")
    assert len(corpus) == 552


def test_serialize_table() -> None:
    table = {
        "title": "T",
        "section_title": "Results",
        "intro": "Intro text.",
        "header": [["Year", []], ["Winner", []]],
        "data": [[["1999", []], ["A | B", ["/wiki/A"]]]],
    }
    assert serialize_table(table) == (
        "Section: Results\n| Year | Winner |\n|---|---|\n| 1999 | A \\| B |\n\nIntro text."
    )
    assert serialize_table({"title": "T", "intro": "Only an intro."}) == "Only an intro."


def test_serialized_table_puts_header_and_rows_before_a_long_intro() -> None:
    table = {"title": "T", "intro": "word " * 2000, "header": [["Year", []]], "data": [[["1999", []]]]}
    assert serialize_table(table).startswith("| Year |\n|---|\n| 1999 |\n\nword word")


def _markdown_row(cells: list[Any]) -> str:
    return "| " + " | ".join(str(c[0]).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"


@requires_minilm
def test_ottqa_headers_fit_the_encoder_window(data_dir: Path) -> None:
    """Every table's header, and the first row of nearly all, lies in the first 256 MiniLM tokens of the
    passage the dense index encodes ("title" then the serialized table)."""
    from tokenizers import Tokenizer

    from agentrl.core.models import resolve_encoder_path

    tokenizer = Tokenizer.from_file(
        str(Path(resolve_encoder_path("bundled:all-minilm-l6-v2")) / "tokenizer.json")
    )
    tokenizer.enable_truncation(256)
    tables = [json.loads(line) for line in (data_dir / "ottqa" / "ottqa_dev_tables.public.jsonl").open()]
    passages = [f'"{table["title"]}"\n{serialize_table(table)}' for table in tables]
    encoded = [e.offsets for e in tokenizer.encode_batch(passages)]
    header_in, first_row_in = 0, 0
    for table, passage, offsets in zip(tables, passages, encoded, strict=True):
        window_end = max(end for _, end in offsets)
        header, first_row = _markdown_row(table["header"]), _markdown_row(table["data"][0])
        header_end = passage.find(header) + len(header)
        header_in += header_end <= window_end
        first_row_in += passage.find(first_row, header_end) + len(first_row) <= window_end
    assert header_in == len(tables) and first_row_in >= 0.99 * len(tables)


def test_ottqa_supporting_titles_are_unique(tmp_path: Path) -> None:
    table = {"uid": "T_1", "title": "Tee", "header": [["Name", []]], "data": [[["Ann", ["/wiki/Ann"]]]]}
    write_jsonl(tmp_path / "ottqa_questions.jsonl", [{
        "question_id": "q", "question": "Who?", "table_id": "T_1", "answer-text": "Ann",
        "answer-node": [["Ann", [0, 0], "/wiki/Ann", "passage"], ["Ann", [3, 0], "/wiki/Ann", "passage"],
                        ["Tee", [1, 0], "/wiki/Tee", "passage"], ["Ann", [2, 0], None, "table"]],
    }])  # fmt: skip
    write_jsonl(tmp_path / "ottqa_tables.jsonl", [table])
    task = load_tasks("ottqa", tmp_path / "ottqa_questions.jsonl")[0]
    assert task.metadata["supporting_titles"] == ["Tee", "Ann"]


def test_missing_field_names_file_line_and_field(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "hp.jsonl", [{"question": "q1", "answer": "a"}, {"question": "q2"}])
    with pytest.raises(RecordError, match=r"hp\.jsonl:2: record is missing required field 'answer'"):
        load_tasks("hotpotqa", path)
    tasks, report = load_tasks_with_report("hotpotqa", path, on_error="skip")
    assert len(tasks) == 1 and report.skipped == 1 and "hp.jsonl:2" in report.errors[0]
    with pytest.raises(ValueError, match="on_error"):
        load_tasks("hotpotqa", path, on_error="ignore")


GOOD = {"question": "q1", "answer": "a"}


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"question": "q", "answer": []}, "field 'answer' is an empty list"),
        ({"question": "q", "answer": ""}, "field 'answer' is empty"),
        ({"question": "q", "answer": ["A", " "]}, r"field 'answer\[1\]' is empty"),
        ({"question": "  ", "answer": "A"}, "field 'question' is empty"),
        ({"question": "q", "answer": {"text": "A"}}, "field 'answer' must be a string or a number, got dict"),
        ({"question": "q", "answer": True}, "field 'answer' must be a string or a number, got bool"),
        (
            {"question": "q", "answer": "A", "supporting_facts": [["T", 0], ["U"]]},
            r"field 'supporting_facts\[1\]' must be a pair \[title, sent_id\]",
        ),
        (
            {"question": "q", "answer": "A", "supporting_facts": [["T", "first"]]},
            r"field 'supporting_facts\[0\]' sent_id must be an integer, got 'first'",
        ),
        (
            {"question": "q", "answer": "A", "supporting_facts": {"title": ["T", "U"], "sent_id": [0]}},
            "field 'supporting_facts' must hold two lists of equal length",
        ),
        (
            {"question": "q", "answer": "A", "context": [["T", "one sentence as a string"]]},
            r"field 'context\[0\]' must list its sentences as strings",
        ),
    ],
)
def test_bad_fields_name_file_line_and_field(tmp_path: Path, bad: dict[str, Any], message: str) -> None:
    path = write_jsonl(tmp_path / "hp.jsonl", [GOOD, bad, GOOD])
    with pytest.raises(RecordError, match=rf"hp\.jsonl:2: {message}"):
        load_tasks("hotpotqa", path)
    tasks, report = load_tasks_with_report("hotpotqa", path, on_error="skip")
    assert len(tasks) == 2 and report.skipped == 1 and report.errors[0].startswith(f"{path}:2: field")


def test_answer_blank_is_not_scored_as_a_match(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "nq.jsonl", [{"question": "q", "answers": ["", "the"]}])
    with pytest.raises(RecordError, match=r"nq\.jsonl:1: field 'answers\[0\]' is empty"):
        load_tasks("nq_open", path)


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".jsonl.gz"])
def test_empty_file_is_an_error(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"hp{suffix}"
    if suffix == ".jsonl.gz":
        path.write_bytes(gzip.compress(b"\n"))
    else:
        path.write_text("[]" if suffix == ".json" else "\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=rf"hp{re.escape(suffix)}: the file holds no records"):
        load_tasks("hotpotqa", path, on_error="skip")


def test_a_load_without_tasks_is_an_error(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "hp.jsonl", [{"question": "q"}, {"question": "r", "answer": ""}])
    with pytest.raises(DatasetError, match=r"no tasks loaded: hotpotqa: 0 tasks from 2 records .*2 skipped"):
        load_tasks("hotpotqa", path, on_error="skip")
    assert load_tasks("hotpotqa", write_jsonl(tmp_path / "ok.jsonl", [GOOD]), limit=0) == []


def test_latin1_bytes_name_the_line_and_skipping_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "hp.jsonl"
    path.write_bytes(
        (json.dumps(GOOD) + "\n").encode()
        + '{"question": "caf\u00e9", "answer": "a"}\n'.encode("latin-1")
        + (json.dumps(GOOD) + "\n{not json\n" + json.dumps(GOOD) + "\n").encode()
    )
    with pytest.raises(RecordError, match=r"hp\.jsonl:2: not valid UTF-8"):
        load_tasks("hotpotqa", path)
    tasks, report = load_tasks_with_report("hotpotqa", path, on_error="skip")
    assert (len(tasks), report.records, report.skipped) == (3, 5, 2)
    assert [e.split(": ")[0].rsplit(":", 1)[1] for e in report.errors] == ["2", "4"]
    json_path = tmp_path / "hp.json"
    json_path.write_bytes(b'[\n{"question": "q", "answer": "a"},\n{"question": "caf\xe9", "answer": "a"}\n]')
    with pytest.raises(DatasetError, match=r"hp\.json:3: not valid UTF-8"):
        load_tasks("hotpotqa", json_path)


def test_converter_errors_carry_file_and_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(record: Any, ctx: Any) -> Task:
        return Task(id="x", question=record.data["question"], answers=[record.data["answer"][5]])

    monkeypatch.setattr(LOADERS.get("nq_open"), "convert", broken)
    path = write_jsonl(tmp_path / "nq.jsonl", [{"question": "q", "answer": "long answer"}, GOOD])
    with pytest.raises(RecordError, match=r"nq\.jsonl:2: cannot read the record \(IndexError: string index"):
        load_tasks("nq_open", path)
    assert len(load_tasks("nq_open", path, on_error="skip")) == 1


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".json.gz"])
def test_gzipped_files_and_directories(tmp_path: Path, suffix: str) -> None:
    rows = [{"question": f"q{i}", "answer": "a", "id": str(i)} for i in range(3)]
    text = json.dumps(rows) if suffix == ".json.gz" else "".join(json.dumps(r) + "\n" for r in rows)
    path = tmp_path / f"nq_dev{suffix}"
    path.write_bytes(gzip.compress(text.encode("utf-8")))
    assert [t.id for t in load_tasks("nq_open", path)] == ["0", "1", "2"]
    assert [t.id for t in load_tasks("nq_open", tmp_path)] == ["0", "1", "2"]


def test_invalid_json_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "q", "answer": "a"}\n{not json\n', encoding="utf-8")
    with pytest.raises(RecordError, match=r"bad\.jsonl:2: invalid JSON"):
        load_tasks("nq_open", path)
    assert len(load_tasks("nq_open", path, on_error="skip")) == 1


def test_json_and_parquet_files(tmp_path: Path) -> None:
    rows = [{"problem": f"p{i}", "answer": str(i), "unique_id": f"id{i}"} for i in range(3)]
    (tmp_path / "m.json").write_text(json.dumps(rows), encoding="utf-8")
    assert [t.answers for t in load_tasks("math500", tmp_path / "m.json")] == [["0"], ["1"], ["2"]]
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "m.parquet")
    assert len(load_tasks("math500", tmp_path / "m.parquet", limit=2)) == 2
    with pytest.raises(FileNotFoundError):
        load_tasks("math500", tmp_path / "missing.jsonl")


def test_gsm8k_format(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "gsm8k_test.jsonl",
        [{"question": "Tom has 3 apples...", "answer": "3 + 4 = <<3+4=7>>7\n#### 1,007"}],
    )
    task = load_tasks("gsm8k", path)[0]
    assert task.answers == ["1007"] and task.dataset == "gsm8k"


def test_numinamath_filter_and_split(tmp_path: Path) -> None:
    rows = [
        {"problem": "a", "answer": "3", "question_type": "math-word-problem"},
        {"problem": "b", "answer": "-2", "question_type": "MCQ"},
        {"problem": "c", "answer": "4.5", "question_type": "math-word-problem"},
        {"problem": "d", "answer": "$7/8$", "question_type": "math-word-problem"},
        {"problem": "e", "answer": "\\frac{1}{2}", "question_type": "math-word-problem"},
        {"problem": "f", "answer": "[1, 2]", "question_type": "math-word-problem"},
        {"problem": "g", "answer": "3", "question_type": "proof"},
        {"problem": "", "answer": "3", "question_type": "math-word-problem"},
        {"problem": "h", "answer": "", "question_type": "math-word-problem"},
        {"problem": "i", "answer": "unknown", "question_type": "math-word-problem"},
        {"problem": "j", "answer": "1, 2", "question_type": "math-word-problem"},
        {"problem": "k", "answer": "10", "question_type": "math-word-problem"},
    ]
    path = write_jsonl(tmp_path / "numinamath.jsonl", [dict(r, uuid=str(i)) for i, r in enumerate(rows)])
    evals, report = load_tasks_with_report("numinamath", path, split="eval", eval_size=2, seed=1)
    train = load_tasks("numinamath", path, split="train", eval_size=2, seed=1)
    assert report.records == 12 and report.filtered == 7 and len(evals) == 2 and len(train) == 3
    assert {t.question for t in evals + train} == {"a", "b", "c", "d", "k"}
    assert next(t for t in evals + train if t.question == "d").answers == ["7/8"]
    again = load_tasks("numinamath", path, split="eval", eval_size=2, seed=1)
    assert [t.id for t in again] == [t.id for t in evals]


@pytest.mark.parametrize(
    ("answer", "ok"),
    [
        ("3", True),
        ("-2", True),
        ("4.5", True),
        ("7/8", True),
        ("$7/8$", True),
        ("\\frac{1}{2}", False),
        ("(1, 2)", False),
        ("x+1", False),
        ("unknown", False),
        ("1e5", False),
    ],
)
def test_numeric_answer_filter(answer: str, ok: bool) -> None:
    assert is_plain_numeric(answer) is ok


def test_searchr1_round_trip(tmp_path: Path) -> None:
    tasks = [
        Task(id=f"q{i}", question=f"question {i}?", answers=["a", "b"], dataset="nq", metadata={"k": i})
        for i in range(3)
    ]
    path = write_searchr1_parquet(tasks, tmp_path / "train.parquet")
    import pyarrow.parquet as pq

    columns = set(pq.read_table(path).column_names)
    assert {"question", "golden_answers", "data_source", "prompt", "reward_model", "extra_info"} <= columns
    assert load_tasks("searchr1", path) == tasks


def test_searchr1_reads_reward_model_targets(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {
            "question": "q?",
            "data_source": "hotpotqa",
            "reward_model": {"ground_truth": {"target": ["x"]}},
            "extra_info": {"split": "test", "index": 4},
        }
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "t.parquet")
    task = load_tasks("searchr1", tmp_path / "t.parquet")[0]
    assert (task.id, task.answers, task.dataset) == ("test_4", ["x"], "hotpotqa")


def test_hub_names_go_through_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    calls: list[tuple[Any, ...]] = []

    def fake_load_dataset(
        path: str, name: str | None = None, split: str | None = None
    ) -> list[dict[str, Any]]:
        calls.append((path, name, split))
        return [{"problem": "p", "answer": "1", "unique_id": "u"}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert load_tasks("math500")[0].id == "u"
    assert load_tasks("math500", "someone/other-math", split="train")[0].answers == ["1"]
    assert calls == [("HuggingFaceH4/MATH-500", None, "test"), ("someone/other-math", None, "train")]


def test_loader_registry_and_iterator(data_dir: Path) -> None:
    assert {"math500", "numinamath", "gsm8k", "hotpotqa", "2wikimultihopqa", "ottqa", "searchr1"} <= set(
        LOADERS.names()
    )
    with pytest.raises(KeyError, match="hotpotqa"):
        LOADERS.get("hotpotq")
    first = next(iter_tasks("nq_open", data_dir / "nq_open"))
    assert first.answers == ["one", "one season"]
