"""Search-R1's own client, as its rollout loop calls the retrieval server, against `agentrl serve-retriever`
with the default settings and its GRPO recipe's batch size (512 prompts x 5 rollouts = 2,560 queries).

The two client functions below follow Search-R1's documented request/response shape: POST
`{"queries", "topk", "return_scores": true}` to `/retrieve`, read `.json()["result"]`, and render each hit as
`Doc {i}(Title: {first line of contents}) {other lines}` plus a newline.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from agentrl.cli.main import app as cli_app
from retrievers import open_retriever
from retrievers.server import ServerConfig, ServerLimits, ServerThread, create_app

SEARCH_R1_TOPK = 3  # the retriever.topk of Search-R1's train_grpo.sh
RECIPE_QUERIES = 512 * 5


def searchr1_batch_search(url: str, queries: list[str], topk: int) -> dict[str, Any]:
    """Search-R1's `_batch_search`: one POST with every query of the rollout step, the JSON answer back."""
    import requests

    payload = {"queries": queries, "topk": topk, "return_scores": True}
    return requests.post(url, json=payload, timeout=120).json()


def searchr1_passages2string(retrieval_result: list[dict[str, Any]]) -> str:
    """Search-R1's `_passages2string`: the title is the first line of `contents`, the text the other lines."""
    rendered = ""
    for position, doc_item in enumerate(retrieval_result, start=1):
        lines = doc_item["document"]["contents"].split("\n")
        rendered += f"Doc {position}(Title: {lines[0]}) {chr(10).join(lines[1:])}\n"
    return rendered


def recipe_queries(count: int) -> list[str]:
    """`count` rollout queries over the synthetic world's questions (5 rollouts ask similar things)."""
    from environments.synthetic_world import build_world

    questions = [task.question for task in build_world(0, 120).tasks]
    return [f"{questions[i // 5 % len(questions)]} (rollout {i % 5})" for i in range(count)]


@pytest.fixture(scope="module")
def bm25_server(world_bm25_index: Path) -> Iterator[ServerThread]:
    """The server exactly as `agentrl serve-retriever INDEX` configures it, on a free loopback port."""
    config = dataclasses.replace(ServerConfig(), port=0)
    with ServerThread(open_retriever(world_bm25_index), config) as running:
        yield running


def test_serve_retriever_defaults_are_the_server_defaults(world_bm25_index: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import retrievers.server

    started: list[ServerConfig] = []
    monkeypatch.setattr(retrievers.server, "serve", lambda _, config, info=None: started.append(config))
    result = CliRunner().invoke(cli_app, ["serve-retriever", str(world_bm25_index)])
    assert result.exit_code == 0, result.output
    assert started == [ServerConfig()]
    assert started[0].limits.max_queries >= RECIPE_QUERIES
    recipe_body = json.dumps({"queries": recipe_queries(RECIPE_QUERIES), "topk": 3, "return_scores": True})
    assert len(recipe_body.encode()) * 10 < started[0].limits.max_body_bytes


def test_search_r1_recipe_batch_of_2560_queries(bm25_server: ServerThread, world_bm25_index: Path) -> None:
    queries = recipe_queries(RECIPE_QUERIES)
    batcher = bm25_server._server.config.app.state.batcher  # type: ignore[attr-defined]
    batches_before = batcher.batches
    results = searchr1_batch_search(bm25_server.url + "/retrieve", queries, SEARCH_R1_TOPK)["result"]
    assert len(results) == RECIPE_QUERIES and all(len(r) == SEARCH_R1_TOPK for r in results)
    rendered = [searchr1_passages2string(result) for result in results]
    assert all(text.count("\nDoc ") == SEARCH_R1_TOPK - 1 for text in rendered)

    local = open_retriever(world_bm25_index).search(queries, SEARCH_R1_TOPK)
    assert [[e["document"]["id"] for e in r] for r in results] == [[h.id for h in hits] for hits in local]
    calls = batcher.batches - batches_before
    assert calls >= RECIPE_QUERIES // ServerConfig().max_batch, "the request was not split into chunks"


def test_search_r1_topk_0_means_the_default(bm25_server: ServerThread) -> None:
    results = searchr1_batch_search(bm25_server.url + "/retrieve", recipe_queries(4), 0)["result"]
    assert [len(r) for r in results] == [ServerLimits().default_topk] * 4


def test_over_long_query_is_truncated_not_refused(bm25_server: ServerThread, world_bm25_index: Path) -> None:
    queries = recipe_queries(3)
    long_query = queries[1] + " filler" * 2000
    assert len(long_query) > ServerLimits().max_query_chars
    results = searchr1_batch_search(bm25_server.url + "/retrieve", [queries[0], long_query, queries[2]], 3)
    local = open_retriever(world_bm25_index).search(
        [queries[0], long_query[: ServerLimits().max_query_chars], queries[2]], 3
    )
    assert [[e["document"]["id"] for e in r] for r in results["result"]] == [[h.id for h in r] for r in local]


def test_over_long_query_is_cut_to_the_encoders_max_length(world_dense_index: Path) -> None:
    """A dense index truncates queries to its encoder's max_length tokens: answers as for the whole query."""
    retriever = open_retriever(world_dense_index, device="cpu")
    queries = recipe_queries(3)
    long_query = queries[1] + " filler" * 2000
    with ServerThread(retriever, dataclasses.replace(ServerConfig(), port=0)) as running:
        results = searchr1_batch_search(running.url + "/retrieve", [queries[0], long_query, queries[2]], 3)
    local = retriever.search([queries[0], long_query, queries[2]], 3)
    assert [[e["document"]["id"] for e in r] for r in results["result"]] == [[h.id for h in r] for r in local]
    for entries, hits in zip(results["result"], local, strict=True):
        assert [e["score"] for e in entries] == pytest.approx([h.score for h in hits], abs=1e-5)


def test_search_env_searchr1_format_matches_search_r1_rendering(bm25_server: ServerThread) -> None:
    """The env's `searchr1` observation over HTTP equals Search-R1's own rendering of the raw answer."""
    from agentrl.core.types import Task
    from environments.search_env import SearchQAEnv

    query = recipe_queries(1)[0]
    raw = searchr1_batch_search(bm25_server.url + "/retrieve", [query], SEARCH_R1_TOPK)["result"][0]
    expected = f"\n\n<information>{searchr1_passages2string(raw).strip()}</information>\n\n"

    env = SearchQAEnv(
        retriever=open_retriever(bm25_server.url), observation_format="searchr1", max_obs_chars=None
    )
    env.reset(options={"task": Task(id="q", question=query, answers=["x"])})
    observation, *_ = env.step(f"<think>Look it up.</think><search>{query}</search>")
    assert observation == expected


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--max-batch", "0"], "--max-batch must be at least 1, got 0"),
        (["--port", "99999"], "--port must be between 0 and 65535"),
        (["--default-topk", "500", "--max-topk", "100"], "--default-topk must be between 1 and --max-topk"),
        (["--max-topk", "0"], "--max-topk must be at least 1, got 0"),
        (["--max-queries", "-1"], "--max-queries must be at least 1"),
        (["--max-body-bytes", "0"], "--max-body-bytes must be at least 1, got 0"),
        (["--max-wait-ms", "nan"], "--max-wait-ms must be a finite number >= 0"),
        (["--nprobe", "0"], "--nprobe must be at least 1"),
    ],
)
def test_serve_retriever_refuses_bad_settings_at_start(
    world_bm25_index: Path, monkeypatch: pytest.MonkeyPatch, options: list[str], message: str
) -> None:
    import retrievers.server

    monkeypatch.setattr(retrievers.server, "serve", lambda *a, **k: pytest.fail("the server was started"))
    result = CliRunner().invoke(cli_app, ["serve-retriever", str(world_bm25_index), *options])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert message in " ".join(result.output.split())


def test_create_app_refuses_a_config_that_answers_nothing() -> None:
    from retrievers.memory import InMemoryRetriever

    retriever = InMemoryRetriever([{"id": "1", "title": "Paris", "text": "Capital of France."}])
    limits = ServerLimits(default_topk=5, max_topk=2)
    with pytest.raises(ValueError, match=r"--default-topk must be between 1 and --max-topk \(2\), got 5"):
        create_app(retriever, ServerConfig(limits=limits))
