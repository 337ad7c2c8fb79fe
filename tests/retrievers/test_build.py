"""Index builds: resume after a hard kill, atomic output, FAISS types, BM25, hybrid and `open_retriever`."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agentrl.cli.main import app
from retrievers import open_retriever
from retrievers.build import CRASH_ENV, BuildConfig, build_index
from retrievers.dense import check_index_type
from retrievers.index_meta import read_meta
from tests.conftest import REPO_ROOT, requires_minilm

BUILD_ARGS = [
    "--shard-size",
    "100",
    "--max-length",
    "64",
    "--batch-size",
    "32",
    "--device",
    "cpu",
    "--no-progress",
]


@requires_minilm
def test_killed_build_resumes_without_re_encoding_finished_shards(wiki_subset: Path, tmp_path: Path) -> None:
    out = tmp_path / "wiki"
    args = ["index", "build", "--corpus", str(wiki_subset), "--out", str(out), *BUILD_ARGS]
    env = {**os.environ, CRASH_ENV: "2"}
    code = f"import sys; from agentrl.cli.main import app; sys.argv = ['agentrl', *{args!r}]; app()"
    killed = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO_ROOT, capture_output=True, timeout=300
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    partial = tmp_path / ".wiki.partial"
    assert sorted(p.name for p in (partial / "shards").glob("*.npy")) == [
        "shard-00000.npy",
        "shard-00001.npy",
    ]
    assert not out.exists()
    with pytest.raises(FileNotFoundError, match="resume"):
        read_meta(out)

    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    encoded, reused = map(
        int, re.search(r"encoded (\d+) passages .* reused (\d+) shards", result.output).groups()
    )
    assert (encoded, reused) == (
        100,
        2,
    )  # 300 passages: shards 0 and 1 survived the kill, only shard 2 is new
    meta = read_meta(out)
    assert meta["num_docs"] == 300 and meta["kind"] == "dense"
    assert not partial.exists() and not (out / "shards").exists()
    hits = open_retriever(out, device="cpu").search(["Teutberga queen of Lotharingia"], 3)[0]
    assert hits[0].title == "Teutberga" and hits[0].id == "0"


@requires_minilm
def test_resume_with_other_settings_is_refused(wiki_subset: Path, tmp_path: Path) -> None:
    partial = tmp_path / ".idx.partial"
    (partial / "shards").mkdir(parents=True)
    (partial / "shards" / "shard-00000.npy").write_bytes(b"finished work")
    (partial / "build.json").write_text(json.dumps({"fingerprint": {"shard_size": 1}, "docs_done": True}))
    cfg = BuildConfig(corpus=str(wiki_subset), out=str(tmp_path / "idx"), progress=False)
    with pytest.raises(ValueError, match=r"different settings .*--restart"):
        build_index(cfg)


def test_index_type_sanity_errors() -> None:
    with pytest.raises(ValueError, match=r"IVF4096.*only 300 passages.*use IVF69 or Flat"):
        check_index_type("IVF4096,PQ64", 300, 384)
    with pytest.raises(ValueError, match="multiple of 7"):
        check_index_type("IVF16,PQ7", 5000, 384)
    with pytest.raises(ValueError, match="at least 256 passages"):
        check_index_type("PQ16", 100, 384)
    check_index_type("HNSW32", 10, 384)


@requires_minilm
def test_trained_index_types_build_and_search(wiki_subset: Path, tmp_path: Path) -> None:
    cfg = BuildConfig(
        corpus=str(wiki_subset),
        out=str(tmp_path / "ivf"),
        index_type="IVF4,SQ8",
        max_length=64,
        device="cpu",
        progress=False,
    )
    build_index(cfg)
    retriever = open_retriever(tmp_path / "ivf", device="cpu", nprobe=8)
    assert retriever.search(["Teutberga queen of Lotharingia"], 5)[0][0].title == "Teutberga"
    with pytest.raises(FileExistsError, match="--overwrite"):
        build_index(cfg)


@requires_minilm
@pytest.mark.parametrize(
    ("index_type", "message"),
    [("IVF4096,Flat", "4096 IVF lists"), ("PQ7", "multiple of 7"), ("Bogus9", "faiss")],
)
def test_a_bad_index_type_is_refused_before_any_passage_is_encoded(
    wiki_subset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, index_type: str, message: str
) -> None:
    import retrievers.build

    def encode_shards(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("passages were encoded before the index type was checked")

    monkeypatch.setattr(retrievers.build, "encode_shards", encode_shards)
    bad = BuildConfig(
        corpus=str(wiki_subset), out=str(tmp_path / "bad"), index_type=index_type, progress=False
    )
    with pytest.raises(ValueError, match=message):
        build_index(bad)


@requires_minilm
def test_bm25_and_hybrid_indexes(wiki_subset: Path, tmp_path: Path) -> None:
    for kind in ("bm25", "hybrid"):
        out = tmp_path / kind
        build_index(
            BuildConfig(corpus=str(wiki_subset), out=str(out), kind=kind, max_length=64, progress=False)
        )
        retriever = open_retriever(out)
        assert type(retriever).__name__.lower().startswith(kind)
        results = retriever.search(["Teutberga Lotharingia queen", "zzzzunknownword"], 4)
        assert results[0][0].title == "Teutberga"
        assert len(results[0]) == 4 and all(h.score > 0 for h in results[0])
        assert read_meta(out)["kind"] == kind
    assert open_retriever(tmp_path / "bm25").search(["zzzzunknownword"], 3) == [[]]


def test_open_retriever_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_retriever(tmp_path / "missing")
    (tmp_path / "idx").mkdir()
    (tmp_path / "idx" / "meta.json").write_text(json.dumps({"format": "agentrl-index", "kind": "magic"}))
    with pytest.raises(KeyError, match="unknown index kind 'magic'"):
        open_retriever(tmp_path / "idx")
