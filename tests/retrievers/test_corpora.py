"""Corpus readers on the shared samples and on small hand-written files; the on-disk document store."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from retrievers.corpora import CorpusFormatError, Document, detect_format, read_corpus, split_contents
from retrievers.docstore import DocStore, DocStoreWriter


def test_searchr1_sample(shared_data: Path) -> None:
    path = shared_data / "wiki_corpus" / "wiki_passages.searchr1.public.jsonl"
    assert detect_format(path) == "searchr1"
    first = next(read_corpus(path))
    assert first.id == "0" and first.title == "Teutberga" and first.text.startswith("Teutberga( died")


def test_hotpotqa_and_2wiki_paragraphs_deduplicated_by_title(shared_data: Path) -> None:
    hotpot = shared_data / "hotpotqa" / "hotpotqa_dev_distractor.public.jsonl"
    assert detect_format(hotpot) == "hotpotqa"
    docs = list(itertools.islice(read_corpus(hotpot), 30))
    assert len({d.title for d in docs}) == len(docs) and docs[0].id == docs[0].title
    assert docs[0].text.startswith("Valencia CF had a successful season") and "  " not in docs[0].text
    wiki2 = shared_data / "2wikimultihopqa" / "2wikimultihopqa_dev.public.jsonl"
    assert detect_format(wiki2) == "2wiki"
    doc = next(read_corpus(wiki2))
    assert doc.title == "Anthony Robinson (Unitarian)"


def test_ottqa_tables_and_passages(shared_data: Path) -> None:
    tables = shared_data / "ottqa" / "ottqa_dev_tables.public.jsonl"
    assert detect_format(tables) == "ottqa"
    docs = read_corpus(tables)
    table = next(docs)
    assert table.title == "1911 Notre Dame Fighting Irish football team"
    lines = table.text.splitlines()
    assert lines[0] == "Section: Schedule"
    assert lines[1] == "| Date | Opponent | Site | Result |" and lines[2] == "|---|---|---|---|"
    assert lines[3].startswith("| October 7 | Ohio Northern |")
    intro = table.text.index("The 1911 Notre Dame")
    assert intro > table.text.index("| October 7 |"), "the header and rows come before the introduction"
    passages = read_corpus(shared_data / "ottqa" / "ottqa_dev_passages.public.jsonl", "ottqa")
    first_passage = next(p for p in passages if p.id.startswith("/wiki/"))
    assert first_passage.title == "'s-Hertogenbosch"


def test_dpr_jsonl_and_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    tsv = tmp_path / "psgs.tsv"
    tsv.write_text('id\ttext\ttitle\n1\tAaron is a prophet.\tAaron\n2\t"quoted" text\tB\n', encoding="utf-8")
    assert list(read_corpus(tsv)) == [
        Document("1", "Aaron", "Aaron is a prophet."),
        Document("2", "B", "quoted text"),
    ]
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text(json.dumps({"id": 7, "text": "body"}) + "\n", encoding="utf-8")
    assert list(read_corpus(jsonl)) == [Document("7", "", "body")]
    parquet = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "title": ["A", None], "text": ["x", "y"]}), parquet)
    assert list(read_corpus(parquet)) == [Document("a", "A", "x"), Document("b", "", "y")]


def test_searchr1_rows_are_kept_only_where_rebuilding_would_change_them(tmp_path: Path) -> None:
    rows = [
        {"id": "0", "contents": '"Aaron"\nAaron is a prophet.'},
        {"id": "1", "contents": "no title line"},
        {"id": "2", "contents": '"B"\nbody', "url": "https://b.example"},
        {"id": 3, "contents": '"C"\nbody'},
    ]
    corpus = tmp_path / "wiki.jsonl"
    corpus.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    docs = list(read_corpus(corpus))
    assert docs[0].record is None, "a row in the usual layout is rebuilt, not stored twice"
    assert [json.loads(d.record or "null") for d in docs[1:]] == rows[1:]
    writer = DocStoreWriter(tmp_path / "docs.sqlite")
    writer.add_all(docs)
    writer.close()
    assert [d.record for d in DocStore(tmp_path / "docs.sqlite").get_rows([3, 0, 1])] == [
        docs[3].record,
        None,
        docs[1].record,
    ]


def test_errors_name_file_line_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "1", "contents": "\\"T\\"\\nx"}\n{"id": "2"}\n', encoding="utf-8")
    with pytest.raises(CorpusFormatError, match=r"bad\.jsonl:2: missing field 'contents'"):
        list(read_corpus(bad))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"id": "1", "text": "a"}\n{oops\n', encoding="utf-8")
    with pytest.raises(CorpusFormatError, match=r"broken\.jsonl:2: invalid JSON"):
        list(read_corpus(broken))
    typed = tmp_path / "typed.jsonl"
    typed.write_text('{"id": "1", "text": ["a"]}\n', encoding="utf-8")
    with pytest.raises(CorpusFormatError, match=r"typed\.jsonl:1: field 'text' must be str, got list"):
        list(read_corpus(typed, "jsonl"))
    with pytest.raises(KeyError, match="Did you mean 'jsonl'"):
        read_corpus(typed, "jsonlines")


def test_split_contents() -> None:
    assert split_contents('"Title"\nline one\nline two') == ("Title", "line one\nline two")
    assert split_contents("bare") == ("bare", "")


def test_docstore_rows_ids_and_duplicates(tmp_path: Path) -> None:
    writer = DocStoreWriter(tmp_path / "docs.sqlite")
    writer.add_all(Document(str(i), f"T{i}", f"text {i}") for i in range(12_000))
    writer.close()
    store = DocStore(tmp_path / "docs.sqlite")
    assert len(store) == 12_000
    assert [d.id for d in store.get_rows([11_999, 3, 3])] == ["11999", "3", "3"]
    assert store.get_ids(["5", "nope"]) == [Document("5", "T5", "text 5"), None]
    assert [d.id for d in store.iter_range(5_998, 6_002)] == ["5998", "5999", "6000", "6001"]
    with pytest.raises(KeyError, match="not in document store"):
        store.get_rows([12_000])
    dup = DocStoreWriter(tmp_path / "dup.sqlite")
    dup.add_all([Document("x", "", "a"), Document("y", "", "b"), Document("x", "", "c")])
    with pytest.raises(ValueError, match=r"'x' occurs more than once .*0 and 2"):
        dup.close()
