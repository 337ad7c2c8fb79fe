"""One bad request never fails the requests batched with it; requests are checked before they join a batch;
bodies over the size limit are refused before they are read; bearer tokens are matched case-insensitively by
scheme and in constant time."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from retrievers import open_retriever
from retrievers.base import Hit, Retriever
from retrievers.client import HttpRetriever
from retrievers.server import MicroBatcher, ServerConfig, ServerLimits, ServerThread

INNOCENT = 20
LONE_SURROGATE_BODY = b'{"queries": ["\\ud800"], "topk": 2}'


class Picky:
    """Answers every query with one hit naming it; fails a whole call holding "boom" (RuntimeError) or "bad"
    (ValueError), as a tokenizer does for one unreadable input. Records the queries of every call."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def search(self, queries: list[str], k: int) -> list[list[Hit]]:
        self.calls.append(list(queries))
        if "boom" in queries:
            raise RuntimeError("the encoder choked")
        if "bad" in queries:
            raise ValueError("query 'bad' cannot be searched")
        return [[Hit(q, q, f"about {q}", 1.0)] for q in queries]


@pytest.fixture()
def picky_server() -> Iterator[tuple[Picky, ServerThread]]:
    retriever = Picky()
    config = ServerConfig(port=0, max_wait_ms=300.0)  # long enough for every request to share one batch
    with ServerThread(retriever, config) as running:
        yield retriever, running


def fire_together(url: str, bodies: list[dict[str, object] | bytes]) -> list[httpx.Response]:
    async def send() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            return await asyncio.gather(
                *(
                    client.post("/retrieve", content=b, headers={"content-type": "application/json"})
                    if isinstance(b, bytes)
                    else client.post("/retrieve", json=b)
                    for b in bodies
                )
            )

    return asyncio.run(send())


def innocent_bodies() -> list[dict[str, object] | bytes]:
    return [{"queries": [f"q{i}"], "topk": 1} for i in range(INNOCENT)]


def assert_innocents_answered(responses: list[httpx.Response]) -> None:
    assert [r.status_code for r in responses[:INNOCENT]] == [200] * INNOCENT
    ids = [r.json()["result"][0][0]["id"] for r in responses[:INNOCENT]]
    assert ids == [f"q{i}" for i in range(INNOCENT)]


@pytest.mark.parametrize(("poison", "status"), [("boom", 500), ("bad", 422)])
def test_a_failing_query_fails_only_its_own_request(picky_server, poison: str, status: int) -> None:  # type: ignore[no-untyped-def]
    retriever, running = picky_server
    responses = fire_together(running.url, [*innocent_bodies(), {"queries": ["x", poison], "topk": 1}])
    assert_innocents_answered(responses)
    assert responses[-1].status_code == status
    assert ("the encoder choked" if poison == "boom" else "cannot be searched") in responses[-1].text
    assert any(poison in call and len(call) > 2 for call in retriever.calls), "requests were never batched"


def test_lone_surrogate_is_refused_before_it_joins_a_batch(picky_server) -> None:  # type: ignore[no-untyped-def]
    retriever, running = picky_server
    responses = fire_together(running.url, [*innocent_bodies(), LONE_SURROGATE_BODY])
    assert_innocents_answered(responses)
    assert responses[-1].status_code == 422 and "queries[0] is not valid Unicode" in responses[-1].text
    assert all("\ud800" not in call for call in retriever.calls)


def test_lone_surrogate_against_a_real_tokenizer(world_dense_index: Path) -> None:
    with ServerThread(open_retriever(world_dense_index, device="cpu"), ServerConfig(port=0)) as running:
        response = httpx.post(
            running.url + "/retrieve",
            content=LONE_SURROGATE_BODY,
            headers={"content-type": "application/json"},
            timeout=60,
        )
        assert response.status_code == 422 and "queries[0]" in response.text
        assert len(HttpRetriever(running.url).search(["which city"], 2)[0]) == 2


def open_world_retriever(kind: str, dense_index: Path, bm25_index: Path) -> Retriever:
    """A dense, BM25 or hybrid (both of them fused) retriever over the synthetic world."""
    from retrievers.bm25 import BM25Retriever
    from retrievers.dense import DenseRetriever
    from retrievers.hybrid import HybridRetriever

    if kind == "bm25":
        return BM25Retriever.load(bm25_index)
    dense = DenseRetriever.load(dense_index, device="cpu")
    return dense if kind == "dense" else HybridRetriever(dense, BM25Retriever.load(bm25_index))


@pytest.mark.parametrize("kind", ["dense", "bm25", "hybrid"])
def test_lone_surrogate_through_the_python_api(
    kind: str, world_dense_index: Path, world_bm25_index: Path
) -> None:
    retriever = open_world_retriever(kind, world_dense_index, world_bm25_index)
    with pytest.raises(ValueError, match=r"^queries\[1\] is not valid Unicode text: .* at character 4$"):
        retriever.search(["which city", "abcd\ud800"], 2)
    assert len(retriever.search(["which city"], 2)[0]) == 2


def test_large_requests_are_split_into_chunks_of_max_batch() -> None:
    retriever = Picky()
    batcher = MicroBatcher(retriever, max_batch=100, max_wait_ms=1.0)
    queries = [f"q{i}" for i in range(250)]

    async def run() -> list[list[Hit]]:
        await batcher.start()
        try:
            return await batcher.search(queries, 1)
        finally:
            await batcher.stop()

    results = asyncio.run(run())
    assert [hits[0].id for hits in results] == queries
    assert [len(call) for call in retriever.calls] == [100, 100, 50]


class Gated:
    """Answers every query with one hit naming it, one call at a time as the test allows: each call records
    its queries, signals `entered`, then waits for a `gate` release. A call holding "boom" raises
    RuntimeError."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.entered = threading.Semaphore(0)
        self.gate = threading.Semaphore(0)

    def search(self, queries: list[str], k: int) -> list[list[Hit]]:
        self.calls.append(list(queries))
        self.entered.release()
        if not self.gate.acquire(timeout=60):
            raise TimeoutError("the test never let this search finish")
        if "boom" in queries:
            raise RuntimeError("the encoder choked")
        return [[Hit(q, q, f"about {q}", 1.0)] for q in queries]

    async def wait_entered(self) -> None:
        """Until the next search call has started (its queries are in `calls`)."""
        assert await asyncio.to_thread(self.entered.acquire, timeout=60), "no search call started"

    def open_gate(self, calls: int = 100) -> None:
        for _ in range(calls):
            self.gate.release()


@contextlib.asynccontextmanager
async def gated_batcher(retriever: Gated) -> AsyncIterator[MicroBatcher]:
    """A running batcher of 4-query batches over `retriever`; on exit the gate opens (so a failed assertion
    does not leave the worker waiting) and the batcher stops."""
    batcher = MicroBatcher(retriever, max_batch=4, max_wait_ms=0.0)
    await batcher.start()
    try:
        yield batcher
    finally:
        retriever.open_gate()
        await batcher.stop()


async def behind_a_large_request(
    batcher: MicroBatcher, retriever: Gated, large: list[str], small: list[str]
) -> tuple[asyncio.Task[list[list[Hit]]], list[asyncio.Task[list[list[Hit]]]]]:
    """Start `large`, and once its first chunk is being searched, one request per query of `small`."""
    large_task = asyncio.create_task(batcher.search(large, 1))
    await retriever.wait_entered()
    small_tasks = [asyncio.create_task(batcher.search([q], 1)) for q in small]
    for _ in range(3):
        await asyncio.sleep(0)  # the small requests run up to their wait for an answer
    return large_task, small_tasks


def test_small_requests_are_answered_between_the_chunks_of_a_large_one() -> None:
    retriever = Gated()
    large = [f"b{i}" for i in range(12)]

    async def run() -> None:
        async with gated_batcher(retriever) as batcher:
            large_task, small_tasks = await behind_a_large_request(batcher, retriever, large, ["s0", "s1"])
            retriever.gate.release()
            await retriever.wait_entered()
            assert retriever.calls[1] == ["s0", "s1"], (
                "the small requests waited for a chunk of the large one"
            )
            retriever.gate.release()
            answers = await asyncio.wait_for(asyncio.gather(*small_tasks), 60)
            assert [hits[0][0].id for hits in answers] == ["s0", "s1"]
            assert not large_task.done(), "the large request's remaining chunks were searched first"
            retriever.open_gate()
            hits = await asyncio.wait_for(large_task, 60)
            assert [h[0].id for h in hits] == large

    asyncio.run(run())
    assert retriever.calls == [large[:4], ["s0", "s1"], large[4:8], large[8:]]


def test_a_stream_of_new_requests_does_not_hold_a_large_one_back() -> None:
    """A new request arrives during every search: the large request still gets every other batch."""
    retriever = Gated()
    large = [f"b{i}" for i in range(12)]

    async def run() -> list[list[Hit]]:
        async with gated_batcher(retriever) as batcher:
            large_task = asyncio.create_task(batcher.search(large, 1))
            small_tasks = []
            for i in range(4):
                await retriever.wait_entered()
                small_tasks.append(asyncio.create_task(batcher.search([f"s{i}"], 1)))
                for _ in range(3):
                    await asyncio.sleep(0)
                retriever.gate.release()
            retriever.open_gate()
            await asyncio.wait_for(asyncio.gather(*small_tasks), 60)
            return await asyncio.wait_for(large_task, 60)

    assert [hits[0].id for hits in asyncio.run(run())] == large
    assert retriever.calls == [large[:4], ["s0"], large[4:8], ["s1", "s2"], large[8:], ["s3"]]


def test_a_failing_chunk_fails_only_its_request_and_ends_its_search() -> None:
    retriever = Gated()
    large = ["b0", "b1", "b2", "b3", "boom", *(f"b{i}" for i in range(5, 12))]

    async def run() -> tuple[BaseException | list[list[Hit]], list[list[Hit]]]:
        async with gated_batcher(retriever) as batcher:
            large_task, small_tasks = await behind_a_large_request(batcher, retriever, large, ["s0"])
            retriever.open_gate()
            small = await asyncio.wait_for(small_tasks[0], 60)
            failed = await asyncio.wait_for(asyncio.gather(large_task, return_exceptions=True), 60)
            return failed[0], small

    failed, small = asyncio.run(run())
    assert isinstance(failed, RuntimeError) and small[0][0].id == "s0"
    assert retriever.calls == [large[:4], ["s0"], large[4:8]], "the failed request went on being searched"


@pytest.mark.parametrize(
    ("header", "status"),
    [
        ("Bearer s3cret", 200),
        ("bearer s3cret", 200),
        ("BEARER   s3cret", 200),
        ("Bearer s3cre", 401),
        ("Basic s3cret", 401),
        ("s3cret", 401),
        (None, 401),
    ],
)
def test_bearer_scheme_is_case_insensitive(header: str | None, status: int) -> None:
    with ServerThread(Picky(), ServerConfig(port=0, token="s3cret")) as running:
        headers = {"authorization": header} if header is not None else {}
        response = httpx.post(running.url + "/retrieve", json={"queries": ["q"]}, headers=headers, timeout=30)
    assert response.status_code == status


def test_token_is_compared_in_constant_time(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import retrievers.server

    compared: list[tuple[bytes, bytes]] = []
    real = retrievers.server.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(retrievers.server.hmac, "compare_digest", spy)
    with ServerThread(Picky(), ServerConfig(port=0, token="s3cret")) as running:
        response = httpx.get(running.url + "/health", headers={"authorization": "Bearer nope"}, timeout=30)
    assert response.status_code == 401 and compared == [(b"nope", b"s3cret")]


class RawConnection:
    """One HTTP/1.1 keep-alive connection written and read byte by byte, so a test controls what is sent."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=20)
        self.reader = self.sock.makefile("rb")

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.reader.close()
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body) of the next response; the body read by its Content-Length."""
        status = int(self.reader.readline().split()[1])
        headers = {}
        while line := self.reader.readline().strip():
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers, self.reader.read(int(headers.get("content-length", "0")))


def post(body: bytes, length: int | None = None) -> bytes:
    """`POST /retrieve` with `body` and a Content-Length (`length`, else the body's own)."""
    size = len(body) if length is None else length
    head = b"POST /retrieve HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
    return head + f"Content-Length: {size}\r\n\r\n".encode() + body


def post_chunked(body: bytes, chunk: int = 64) -> bytes:
    """`POST /retrieve` with `body` sent in chunked transfer encoding, `chunk` bytes a chunk."""
    head = b"POST /retrieve HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
    pieces = [body[i : i + chunk] for i in range(0, len(body), chunk)]
    chunks = b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in pieces)
    return head + b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"


def test_a_maximal_request_is_refused_413_from_its_content_length() -> None:
    """Under the defaults, max_queries queries of max_query_chars characters (about 67 MB) are refused from
    the Content-Length alone: the answer comes before a byte of the body is sent."""
    limits = ServerLimits()
    size = len('{"queries": []}') + limits.max_queries * (limits.max_query_chars + len('"", '))
    with ServerThread(Picky(), ServerConfig(port=0)) as running, RawConnection(running.url) as conn:
        conn.send(post(b"", length=size))
        status, _, body = conn.response()
    assert status == 413
    assert f"limit of {limits.max_body_bytes} bytes" in json.loads(body)["detail"]
    assert size > limits.max_body_bytes >= 16 * 2**20


@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_over_the_limit_gets_413_and_the_connection_stays_usable(chunked: bool) -> None:
    config = ServerConfig(port=0, limits=ServerLimits(max_body_bytes=1000))
    big = json.dumps({"queries": ["x" * 100] * 20}).encode()
    small = json.dumps({"queries": ["q1"], "topk": 1}).encode()
    with ServerThread(Picky(), config) as running, RawConnection(running.url) as conn:
        conn.send(post_chunked(big) if chunked else post(big))
        status, headers, body = conn.response()
        assert status == 413 and "limit of 1000 bytes (--max-body-bytes)" in json.loads(body)["detail"]
        assert headers.get("connection") != "close"
        conn.send(post_chunked(small, chunk=8) if chunked else post(small))
        status, _, body = conn.response()
    assert status == 200 and json.loads(body)["result"][0][0]["id"] == "q1"
