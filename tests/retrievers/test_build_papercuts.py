"""`agentrl index build` and `index info` on the mistakes people make: a bad corpus line fixed afterwards, an
`--out` that is a file, bytes that are not UTF-8, and a first build killed before it finished."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agentrl.cli.main import app
from retrievers.corpora import CorpusFormatError, read_corpus
from retrievers.index_meta import read_meta
from tests.conftest import fill_disk

runner = CliRunner()
DOCS = [
    {"id": str(i), "title": f"Town {i}", "text": f"Town {i} lies on river number {i}."} for i in range(6)
]


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def build(corpus: Path, out: Path, *extra: str) -> object:
    args = ["index", "build", "--corpus", str(corpus), "--out", str(out), "--kind", "bm25", "--no-progress"]
    return runner.invoke(app, [*args, *extra])


def one_line(output: str) -> str:
    return " ".join(output.split())


def test_build_resumes_after_a_bad_corpus_line_is_fixed(tmp_path: Path) -> None:
    good = [json.dumps(d) for d in DOCS]
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [*good[:2], '{"id": "2", "text": broken', *good[3:]])
    out = tmp_path / "idx"
    failed = build(corpus, out)
    assert failed.exit_code == 2 and f"{corpus}:3: invalid JSON" in one_line(failed.output)
    assert (tmp_path / ".idx.partial").is_dir()

    write_jsonl(corpus, good)
    fixed = build(corpus, out)
    assert fixed.exit_code == 0, fixed.output
    assert read_meta(out)["num_docs"] == len(DOCS) and not (tmp_path / ".idx.partial").exists()


def test_out_naming_a_file_is_a_one_line_error(tmp_path: Path) -> None:
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [json.dumps(d) for d in DOCS])
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not an index")
    for out, message in ((a_file, "is a file"), (a_file / "idx", "notes.txt is a file")):
        result = build(corpus, out)
        assert result.exit_code == 2 and message in one_line(result.output)
        assert isinstance(result.exception, SystemExit)
    assert a_file.read_text() == "not an index"


def test_non_utf8_bytes_are_reported_with_file_and_line(tmp_path: Path) -> None:
    good = [json.dumps(d).encode() for d in DOCS]
    bad_line = b'{"id": "x", "title": "Caf\xe9", "text": "latin-1 bytes"}'
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_bytes(b"\n".join([*good[:3], bad_line, *good[3:]]) + b"\n")
    result = build(corpus, tmp_path / "idx")
    assert result.exit_code == 2
    assert f"{corpus}:4: not valid UTF-8: byte 0xe9 at column 26" in one_line(result.output)

    packed = tmp_path / "corpus.jsonl.gz"
    packed.write_bytes(gzip.compress(corpus.read_bytes()))
    with pytest.raises(CorpusFormatError, match=r"corpus\.jsonl\.gz:4: not valid UTF-8"):
        list(read_corpus(packed, "jsonl"))
    tsv = tmp_path / "psgs.tsv"
    tsv.write_bytes(b"id\ttext\ttitle\n1\tfine\tA\n2\tna\xefve\tB\n")
    with pytest.raises(CorpusFormatError, match=r"psgs\.tsv:3: not valid UTF-8: byte 0xef at column 5"):
        list(read_corpus(tsv))


def test_info_on_a_killed_first_build_points_at_the_partial_build(tmp_path: Path) -> None:
    (tmp_path / ".idx.partial" / "shards").mkdir(parents=True)
    result = runner.invoke(app, ["index", "info", str(tmp_path / "idx")])
    assert result.exit_code == 2
    message = one_line(result.output)
    assert "does not exist" in message and "an unfinished build is in" in message and "resume" in message
    nothing = runner.invoke(app, ["index", "info", str(tmp_path / "other")])
    assert "unfinished build" not in one_line(nothing.output)


def test_overwrite_keeps_the_users_files_in_the_output_directory(tmp_path: Path) -> None:
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [json.dumps(d) for d in DOCS])
    out = tmp_path / "idx"
    assert build(corpus, out).exit_code == 0
    (out / "NOTES.txt").write_text("why this index exists")
    (out / "eval").mkdir()
    (out / "eval" / "recall.json").write_text("{}")
    write_jsonl(corpus, [json.dumps(d) for d in DOCS[:4]])

    result = build(corpus, out, "--overwrite")
    assert result.exit_code == 0, result.output
    assert read_meta(out)["num_docs"] == 4
    assert (out / "NOTES.txt").read_text() == "why this index exists"
    assert (out / "eval" / "recall.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.jsonl", "idx"]


def test_a_corpus_inside_the_output_directory_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "idx"
    assert build(write_jsonl(tmp_path / "first.jsonl", [json.dumps(d) for d in DOCS]), out).exit_code == 0
    corpus = write_jsonl(out / "corpus.jsonl", [json.dumps(d) for d in DOCS[:3]])
    result = build(corpus, out, "--overwrite")
    message = one_line(result.output)
    assert result.exit_code == 2 and f"corpus {corpus} lies inside the output directory {out}" in message
    assert corpus.read_text(encoding="utf-8").count("\n") == 3
    assert read_meta(out)["num_docs"] == len(DOCS)


def test_a_full_disk_is_a_named_error_that_keeps_the_old_index(tmp_path: Path, small_disk: Path) -> None:
    out = small_disk / "idx"
    assert build(write_jsonl(tmp_path / "small.jsonl", [json.dumps(d) for d in DOCS]), out).exit_code == 0
    words = " ".join(f"word{i}" for i in range(60))
    big = [json.dumps({"id": str(i), "title": f"Doc {i}", "text": f"{words} {i}"}) for i in range(3000)]
    result = build(write_jsonl(tmp_path / "big.jsonl", big), out, "--overwrite")
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert f"no space left on {small_disk}" in one_line(result.output)
    assert sorted(p.name for p in small_disk.iterdir()) == ["idx"]
    assert read_meta(out)["num_docs"] == len(DOCS)
    search = runner.invoke(app, ["index", "search", str(out), "Town 3 lies on river", "-k", "2", "--json"])
    assert search.exit_code == 0 and len(json.loads(search.output)["hits"]) == 2


def test_a_first_build_on_a_full_disk_leaves_nothing_behind(tmp_path: Path, small_disk: Path) -> None:
    fill_disk(small_disk)
    result = build(write_jsonl(tmp_path / "small.jsonl", [json.dumps(d) for d in DOCS]), small_disk / "idx")
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert f"no space left on {small_disk}" in one_line(result.output)
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler.bin"]


@pytest.mark.parametrize(("content", "kind"), [("[1, 2]", "array"), ('"dense"', "string"), ("null", "null")])
def test_a_meta_json_that_is_not_an_object_is_a_named_error(tmp_path: Path, content: str, kind: str) -> None:
    (tmp_path / "idx").mkdir()
    (tmp_path / "idx" / "meta.json").write_text(content)
    with pytest.raises(ValueError, match=rf"meta.json: must hold a JSON object .*got a JSON {kind}"):
        read_meta(tmp_path / "idx")
    index = str(tmp_path / "idx")
    for command in (["index", "info", index], ["index", "search", index, "q"], ["serve-retriever", index]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2 and "must hold a JSON object" in one_line(result.output), command
