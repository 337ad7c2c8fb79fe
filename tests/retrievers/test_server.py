"""The retrieval server over real HTTP on loopback: Search-R1's request, 422s, token, concurrency, client."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from retrievers import open_retriever
from retrievers.client import HttpRetriever, RetrievalServerError
from retrievers.server import ServerConfig, ServerLimits, ServerThread
from tests.conftest import requires_minilm

pytestmark = requires_minilm
QUESTIONS = [
    "Which retired Argentine footballer who played as a forward was a main player for Valencia CF?",
    "What government position was held by the woman who portrayed Corliss Archer in the film Kiss and Tell?",
]


@pytest.fixture(scope="module")
def retriever(hotpot_index: Path):  # type: ignore[no-untyped-def]
    return open_retriever(hotpot_index, device="cpu")


@pytest.fixture(scope="module")
def server(retriever) -> Iterator[ServerThread]:  # type: ignore[no-untyped-def]
    limits = ServerLimits(max_queries=64, max_topk=20, max_query_chars=500, default_topk=3)
    with ServerThread(retriever, ServerConfig(port=0, limits=limits), info={"kind": "dense"}) as running:
        yield running


def test_answers_search_r1_client_request(server: ServerThread, retriever) -> None:  # type: ignore[no-untyped-def]
    import requests

    # Written as Search-R1's generation loop writes it: payload, POST, .json()["result"], then contents split.
    payload = {"queries": QUESTIONS, "topk": 3, "return_scores": True}
    results = requests.post(server.url + "/retrieve", json=payload, timeout=60).json()["result"]
    assert len(results) == 2 and all(len(r) == 3 for r in results)
    local = retriever.search(QUESTIONS, 3)
    for entries, hits in zip(results, local, strict=True):
        for doc_item, hit in zip(entries, hits, strict=True):
            content = doc_item["document"]["contents"]
            title, text = content.split("\n")[0], "\n".join(content.split("\n")[1:])
            assert set(doc_item) == {"document", "score"} and set(doc_item["document"]) == {"id", "contents"}
            assert (title, text, doc_item["document"]["id"]) == (f'"{hit.title}"', hit.text, hit.id)
            assert doc_item["score"] == pytest.approx(hit.score, abs=1e-5)

    bare = requests.post(server.url + "/retrieve", json={"queries": QUESTIONS[:1]}, timeout=60).json()
    assert len(bare["result"][0]) == 3  # topk defaults to the server's default_topk
    assert set(bare["result"][0][0]) == {"id", "contents"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"topk": 3}, "queries"),
        ({"queries": "one string", "topk": 3}, "queries"),
        ({"queries": [1, 2], "topk": 3}, "queries"),
        ({"queries": ["q"], "topk": "three"}, "topk"),
        ({"queries": ["q"], "topk": -1}, "topk must be between 1 and 20"),
        ({"queries": ["q"], "topk": 21}, "topk must be between 1 and 20"),
        ({"queries": ["q"] * 65, "topk": 3}, "at most 64 queries"),
    ],
)
def test_malformed_bodies_get_422(server: ServerThread, body: dict, message: str) -> None:
    import httpx

    response = httpx.post(server.url + "/retrieve", json=body, timeout=30)
    assert response.status_code == 422
    assert message in response.text


def test_invalid_json_gets_422(server: ServerThread) -> None:
    import httpx

    response = httpx.post(
        server.url + "/retrieve",
        content=b"{not json",
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 422


def test_health_and_info(server: ServerThread) -> None:
    client = HttpRetriever(server.url)
    assert client.health()["status"] == "ok"
    info = client.info()
    assert info["limits"]["max_topk"] == 20 and info["index"] == {"kind": "dense"}


def test_200_concurrent_requests_are_micro_batched(server: ServerThread, retriever) -> None:  # type: ignore[no-untyped-def]
    import httpx

    queries = [f"{QUESTIONS[i % 2]} ({i})" for i in range(200)]

    async def fire() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as client:
            return await asyncio.gather(
                *(
                    client.post("/retrieve", json={"queries": [q], "topk": 2, "return_scores": True})
                    for q in queries
                )
            )

    batches_before = server._server.config.app.state.batcher.batches  # type: ignore[attr-defined]
    responses = asyncio.run(fire())
    assert [r.status_code for r in responses] == [200] * 200
    batches = server._server.config.app.state.batcher.batches - batches_before  # type: ignore[attr-defined]
    assert batches < 100, f"{batches} batches for 200 concurrent requests: micro-batching did not happen"
    expected = retriever.search(queries[:4], 2)
    for response, hits in zip(responses[:4], expected, strict=True):
        ids = [e["document"]["id"] for e in response.json()["result"][0]]
        assert ids == [h.id for h in hits]


def test_client_is_a_retriever_indistinguishable_from_local(server: ServerThread, retriever) -> None:  # type: ignore[no-untyped-def]
    remote = HttpRetriever(server.url, max_batch=1).search(QUESTIONS, 4)
    local = retriever.search(QUESTIONS, 4)
    assert [[(h.id, h.title, h.text) for h in r] for r in remote] == [
        [(h.id, h.title, h.text) for h in r] for r in local
    ]
    assert open_retriever(server.url).search(QUESTIONS[:1], 1)[0][0].id == local[0][0].id


def test_bearer_token(retriever) -> None:  # type: ignore[no-untyped-def]
    with ServerThread(retriever, ServerConfig(port=0, token="s3cret")) as running:
        with pytest.raises(RetrievalServerError, match="401"):
            HttpRetriever(running.url, retries=0).search(QUESTIONS[:1], 1)
        assert len(HttpRetriever(running.url, token="s3cret").search(QUESTIONS[:1], 2)[0]) == 2


def test_client_retries_with_backoff_then_fails() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = HttpRetriever(f"http://127.0.0.1:{port}/retrieve", timeout=1, retries=2, backoff=0.01)
    with pytest.raises(RetrievalServerError, match="after 3 attempts"):
        client.search(["q"], 1)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"queries": ["Paris"], "topk": NaN}', "topk: Input should be a valid integer, got nan"),
        (b'{"queries": ["Paris"], "topk": Infinity}', "got inf (JSON numbers must be finite)"),
        (b'{"queries": ["Paris"], "topk": true}', "topk: Input should be a valid integer"),
        (b'{"queries": ["Paris"], "topk": 2.5}', "topk: Input should be a valid integer"),
        (b'{"queries": ["Paris"], "topk": 3, "top_k": 5}', "top_k: Extra inputs are not permitted"),
    ],
)
def test_non_finite_boolean_and_unknown_fields_get_422(
    server: ServerThread, content: bytes, message: str
) -> None:
    import httpx

    headers = {"content-type": "application/json"}
    with httpx.Client(timeout=30) as client:
        response = client.post(server.url + "/retrieve", content=content, headers=headers)
        assert response.status_code == 422 and message in response.text
        again = client.post(server.url + "/retrieve", json={"queries": ["Paris"], "topk": 1})
    assert again.status_code == 200 and len(again.json()["result"][0]) == 1
