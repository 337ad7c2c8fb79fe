"""The retrieval server over real HTTP on loopback: Search-R1's request, 422s, token, concurrency, client,
corpus rows returned as stored."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from environments.observations import format_documents_searchr1
from retrievers import open_retriever
from retrievers.base import Retriever
from retrievers.build import BuildConfig, build_index
from retrievers.client import HttpRetriever, RetrievalServerError
from retrievers.index_meta import read_meta
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


ODD_ROWS = [
    {"id": "r1", "contents": "No title layout here, just a line about a zebra."},
    {"id": "r2", "contents": '  "Padded"  \n a zebra with whitespace on both ends \t\n'},
    {"id": "r3", "contents": '"Zürich"\nA zebra in Zürich — naïve café ✓ 日本語'},
    {
        "id": "r4",
        "contents": '"Zebra"\nzebra facts',
        "url": "https://en.wikipedia.org/wiki/Zebra",
        "n": [1.5],
    },
    {"id": 5, "contents": '"Numbered"\na zebra whose id is a JSON number'},
    {"contents": '"Reordered"\na zebra stored contents first', "id": "r6", "lang": "ünï"},
]
ZEBRA = {"queries": ["zebra"], "topk": len(ODD_ROWS), "return_scores": True}


@pytest.fixture(scope="module", params=["bm25", "dense"])
def odd_rows_index(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An index over Search-R1 rows whose contents stray from the `"Title"\\ntext` layout, hold non-ASCII
    text or come with more fields."""
    work = tmp_path_factory.mktemp(f"odd-rows-{request.param}")
    corpus = work / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ODD_ROWS), encoding="utf-8")
    out = work / "index"
    config = BuildConfig(
        str(corpus), str(out), kind=request.param, max_length=64, device="cpu", progress=False
    )
    build_index(config)
    return out


def open_local(index: Path) -> Retriever:
    """The index's retriever, dense ones encoding queries on the CPU."""
    return open_retriever(index, **({"device": "cpu"} if "encoder" in read_meta(index) else {}))


def served_documents(url: str, return_scores: bool = True) -> list[dict[str, object]]:
    """The documents `/retrieve` answers for "zebra", every row of `ODD_ROWS` among them."""
    import requests

    body = {**ZEBRA, "return_scores": return_scores}
    result = requests.post(url + "/retrieve", json=body, timeout=60).json()["result"][0]
    return [entry["document"] if return_scores else entry for entry in result]


@pytest.mark.parametrize("return_scores", [True, False])
def test_retrieve_returns_each_corpus_row_as_stored(odd_rows_index: Path, return_scores: bool) -> None:
    stored = {str(row["id"]): row for row in ODD_ROWS}
    with ServerThread(open_local(odd_rows_index), ServerConfig(port=0)) as running:
        documents = served_documents(running.url, return_scores)
    assert sorted(str(d["id"]) for d in documents) == sorted(stored)
    for document in documents:
        row = stored[str(document["id"])]
        assert list(document.items()) == list(row.items())
        assert str(document["contents"]).encode() == str(row["contents"]).encode()


def test_client_and_local_hits_keep_the_stored_contents(odd_rows_index: Path) -> None:
    stored = {str(row["id"]): row["contents"] for row in ODD_ROWS}
    local = open_local(odd_rows_index)
    with ServerThread(local, ServerConfig(port=0)) as running:
        served = [{"document": d} for d in served_documents(running.url)]
        remote = HttpRetriever(running.url).search(["zebra"], len(ODD_ROWS))[0]
    hits = local.search(["zebra"], len(ODD_ROWS))[0]
    assert [h.contents for h in hits] == [stored[h.id] for h in hits]
    fields = [[(h.id, h.title, h.text, h.contents) for h in found] for found in (remote, hits)]
    assert fields[0] == fields[1]
    assert format_documents_searchr1(remote) == format_documents_searchr1(served)


def test_an_index_without_stored_rows_answers_title_and_text(odd_rows_index: Path, tmp_path: Path) -> None:
    """An index whose document store predates stored rows: `contents` is rebuilt from title and text."""
    old = shutil.copytree(odd_rows_index, tmp_path / "old")
    with sqlite3.connect(old / "docs.sqlite") as conn:
        conn.execute("ALTER TABLE docs DROP COLUMN record")
    retriever = open_local(old)
    with ServerThread(retriever, ServerConfig(port=0)) as running:
        documents = served_documents(running.url)
    hits = {h.id: h for h in retriever.search(["zebra"], len(ODD_ROWS))[0]}
    rebuilt = [
        {"id": d["id"], "contents": f'"{hits[d["id"]].title}"\n{hits[d["id"]].text}'} for d in documents
    ]
    assert documents == rebuilt
    assert {d["id"]: d["contents"] for d in documents}["r3"] == ODD_ROWS[2]["contents"]
