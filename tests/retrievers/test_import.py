"""`agentrl index import`: a FAISS index written by raw faiss over a Search-R1 corpus, served as is."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from agentrl.cli.main import app
from retrievers import open_retriever
from retrievers.index_meta import read_meta
from tests.conftest import requires_minilm

MINILM = "bundled:all-minilm-l6-v2"
QUERIES = ["Which company does Nousand Zoutreth work for?", "a city known for its rivers"]
runner = CliRunner()


def searchr1_corpus(world_corpus: Path, target: Path, limit: int) -> list[str]:
    """The first `limit` world documents as Search-R1's `{"id", "contents": "\\"Title\\"\\ntext"}` lines."""
    docs = [json.loads(line) for line in world_corpus.read_text(encoding="utf-8").splitlines()[:limit]]
    contents = [f'"{d["title"]}"\n{d["text"]}' for d in docs]
    with target.open("w", encoding="utf-8") as handle:
        for doc, text in zip(docs, contents, strict=True):
            handle.write(json.dumps({"id": doc["id"], "contents": text}) + "\n")
    return contents


def write_faiss(vectors: np.ndarray, path: Path, inner_product: bool = True) -> None:
    import faiss

    index = faiss.IndexFlatIP(vectors.shape[1]) if inner_product else faiss.IndexFlatL2(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    faiss.write_index(index, str(path))


def import_args(faiss_file: Path, corpus: Path, *extra: str) -> list[str]:
    return [
        "index", "import", "--faiss-index", str(faiss_file), "--corpus", str(corpus), "--encoder", MINILM,
        "--no-progress", *extra,
    ]  # fmt: skip


@requires_minilm
def test_import_serves_a_raw_faiss_index_without_re_encoding(world_corpus: Path, tmp_path: Path) -> None:
    import faiss
    from sentence_transformers import SentenceTransformer

    from agentrl.core.models import resolve_encoder_path

    corpus = tmp_path / "wiki-18.jsonl"
    contents = searchr1_corpus(world_corpus, corpus, 40)
    model = SentenceTransformer(resolve_encoder_path(MINILM), device="cpu")
    model.max_seq_length = 128
    faiss_file = tmp_path / "e5_Flat.index"
    write_faiss(model.encode(contents, normalize_embeddings=True), faiss_file)
    before = faiss_file.read_bytes()

    result = runner.invoke(app, import_args(faiss_file, corpus, "--max-length", "128"))
    assert result.exit_code == 0, result.output
    assert "40 vectors of dimension 384" in result.output
    meta = read_meta(tmp_path)
    assert meta["kind"] == "dense" and meta["num_docs"] == 40 and meta["corpus"]["format"] == "searchr1"
    assert meta["dense"]["file"] == "e5_Flat.index" and meta["dense"]["index_type"] == "IndexFlatIP"
    assert meta["encoder"]["dim"] == 384 and meta["encoder"]["max_length"] == 128
    assert faiss_file.read_bytes() == before and not (tmp_path / "dense.faiss").exists()

    raw = faiss.read_index(str(faiss_file))
    scores, rows = raw.search(model.encode(QUERIES, normalize_embeddings=True), 3)
    results = open_retriever(tmp_path, device="cpu").search(QUERIES, 3)
    lines = corpus.read_text(encoding="utf-8").splitlines()
    for hits, q_scores, q_rows in zip(results, scores, rows, strict=True):
        assert [h.id for h in hits] == [json.loads(lines[r])["id"] for r in q_rows]
        assert [h.contents for h in hits] == [contents[r] for r in q_rows]
        assert [h.score for h in hits] == pytest.approx(q_scores.tolist(), abs=1e-5)


@requires_minilm
def test_import_into_another_directory_names_the_faiss_file(world_corpus: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    searchr1_corpus(world_corpus, corpus, 10)
    faiss_file = tmp_path / "vectors.index"
    write_faiss(np.random.default_rng(0).normal(size=(10, 384)), faiss_file)
    out = tmp_path / "served"
    result = runner.invoke(app, import_args(faiss_file, corpus, "--out", str(out), "--query-prefix", "q: "))
    assert result.exit_code == 0, result.output
    meta = read_meta(out)
    assert meta["dense"]["file"] == str(faiss_file.resolve())
    assert meta["encoder"]["query_prefix"] == "q: " and meta["encoder_overrides"] == {"query_prefix": "q: "}
    assert len(open_retriever(out, device="cpu").search(QUERIES[:1], 2)[0]) == 2
    again = runner.invoke(app, import_args(faiss_file, corpus, "--out", str(out)))
    assert again.exit_code == 2 and "--overwrite" in again.output


@requires_minilm
def test_import_refuses_vectors_of_another_size_and_a_contradicting_family(
    world_corpus: Path, tmp_path: Path
) -> None:
    corpus = tmp_path / "corpus.jsonl"
    searchr1_corpus(world_corpus, corpus, 10)
    narrow = tmp_path / "narrow.index"
    write_faiss(np.ones((10, 128)), narrow)
    result = runner.invoke(app, import_args(narrow, corpus))
    message = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "holds 128-dimensional vectors but --encoder bundled:all-minilm-l6-v2" in message
    assert "encodes 384-dimensional" in message
    args = ["index", "import", "--faiss-index", str(narrow), "--corpus", str(corpus), "--encoder",
            "intfloat/e5-base-v2", "--family", "bge", "--no-progress"]  # fmt: skip
    result = runner.invoke(app, args)
    message = " ".join(result.output.split())
    assert result.exit_code == 2
    assert "--family bge contradicts --encoder intfloat/e5-base-v2, whose family is e5" in message
    assert not (tmp_path / "meta.json").exists() and not (tmp_path / "docs.sqlite").exists()


def test_import_refuses_mismatched_corpus_and_l2_indexes(world_corpus: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    searchr1_corpus(world_corpus, corpus, 10)
    short = tmp_path / "short.index"
    write_faiss(np.ones((9, 384)), short)
    result = runner.invoke(app, import_args(short, corpus))
    message = " ".join(result.output.split())
    assert result.exit_code == 2 and "holds 9 vectors but corpus" in message and "has 10 documents" in message
    assert not (tmp_path / "meta.json").exists() and not (tmp_path / "docs.sqlite").exists()

    l2 = tmp_path / "l2.index"
    write_faiss(np.ones((10, 384)), l2, inner_product=False)
    result = runner.invoke(app, import_args(l2, corpus))
    assert result.exit_code == 2 and "metric L2" in " ".join(result.output.split())
    not_faiss = tmp_path / "notes.index"
    not_faiss.write_text("hello")
    result = runner.invoke(app, import_args(not_faiss, corpus))
    assert result.exit_code == 2 and "is not a FAISS index file" in " ".join(result.output.split())
    assert not (tmp_path / "meta.json").exists()


def test_a_failed_overwrite_leaves_the_old_index_working(world_corpus: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    searchr1_corpus(world_corpus, corpus, 10)
    vectors = tmp_path / "vectors.index"
    write_faiss(np.random.default_rng(0).normal(size=(10, 384)), vectors)
    out = tmp_path / "served"
    assert runner.invoke(app, import_args(vectors, corpus, "--out", str(out))).exit_code == 0
    before = {name: (out / name).read_bytes() for name in ("meta.json", "docs.sqlite")}

    short = tmp_path / "short.index"
    write_faiss(np.ones((9, 384)), short)
    result = runner.invoke(app, import_args(short, corpus, "--out", str(out), "--overwrite"))
    assert result.exit_code == 2 and "holds 9 vectors" in " ".join(result.output.split())
    assert {name: (out / name).read_bytes() for name in before} == before
    assert sorted(p.name for p in out.iterdir()) == ["docs.sqlite", "meta.json"]
    assert read_meta(out)["num_docs"] == 10 and read_meta(out)["dense"]["file"] == str(vectors.resolve())


def test_a_failed_import_into_a_new_directory_leaves_nothing(world_corpus: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    searchr1_corpus(world_corpus, corpus, 10)
    short = tmp_path / "short.index"
    write_faiss(np.ones((9, 384)), short)
    result = runner.invoke(app, import_args(short, corpus, "--out", str(tmp_path / "new")))
    assert result.exit_code == 2 and not (tmp_path / "new").exists()
