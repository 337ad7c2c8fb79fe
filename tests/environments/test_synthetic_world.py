"""The synthetic world: deterministic, fast, answers recoverable and retrievable by BM25."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from environments.rewards import answer_in_text
from environments.synthetic_world import build_world
from retrievers.memory import InMemoryRetriever


def test_deterministic_and_fast() -> None:
    build_world.cache_clear()
    start = time.perf_counter()
    world = build_world(seed=7)
    assert time.perf_counter() - start < 2.0
    assert len(world.documents) == 3000 and len(world.tasks) == 3000
    build_world.cache_clear()
    again = build_world(seed=7)
    assert again.documents == world.documents and again.tasks == world.tasks
    other = build_world(seed=8)
    assert other.documents != world.documents


def test_shapes_and_mix() -> None:
    world = build_world(seed=0, num_entities=400, num_tasks=300)
    assert len(world.documents) == 400 and len({d["title"] for d in world.documents}) == 400
    assert all(set(d) == {"id", "title", "text"} for d in world.documents)
    hops = Counter(t.metadata["hop"] for t in world.tasks)
    assert set(hops) == {"1-hop", "bridge", "comparison"}
    assert len({t.question for t in world.tasks}) == 300
    with pytest.raises(ValueError):
        build_world(seed=0, num_entities=10)


def test_answers_recoverable_from_supporting_documents() -> None:
    world = build_world(seed=0)
    for task in world.tasks:
        titles = task.metadata["supporting_titles"]
        text = " ".join(world.document(t)["text"] for t in titles)
        if task.answers[0] in ("yes", "no"):
            cities = [world.entities[t].attrs["birth_city"] for t in titles]
            assert (cities[0] == cities[1]) == (task.answers[0] == "yes")
        else:
            assert answer_in_text(text, task.answers), task


def test_supporting_documents_retrievable_by_bm25() -> None:
    world = build_world(seed=0)
    retriever = InMemoryRetriever(world.documents)
    tasks = world.tasks[:300]
    hits_first = hits_bridge = bridges = 0
    for task in tasks:
        titles = task.metadata["supporting_titles"]
        top = [h.title for h in retriever.search([task.question], 3)[0]]
        hits_first += titles[0] in top
        if task.metadata["hop"] == "bridge":
            bridges += 1
            top = [h.title for h in retriever.search([task.metadata["bridge_entity"]], 3)[0]]
            hits_bridge += titles[1] in top
    assert hits_first / len(tasks) >= 0.95
    assert hits_bridge == bridges
