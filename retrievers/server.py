"""A Search-R1-compatible retrieval server (FastAPI + uvicorn) in front of any `Retriever`.

`POST /retrieve` takes Search-R1's request `{"queries": [...], "topk": k, "return_scores": bool}` and answers
`{"result": [[{"document": {"id", "contents"}, "score": s}, ...], ...]}` with scores, or
`{"result": [[{"id", "contents"}, ...], ...]}` without. `GET /health` and `GET /info` describe the server.

Concurrent requests are micro-batched: a worker takes every request waiting in the queue (up to `max_batch`
queries, waiting at most `max_wait_ms` for more after the first) and answers them with one encode + search.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from pydantic import BaseModel

from retrievers.base import Hit, Retriever


class RetrieveRequest(BaseModel):
    """Search-R1's request body; `topk` defaults to the server's `default_topk`."""

    queries: list[str]
    topk: int | None = None
    return_scores: bool = False


@dataclass
class ServerLimits:
    """Per-request limits; requests beyond them are answered 422 with a message."""

    max_queries: int = 1024
    max_topk: int = 100
    max_query_chars: int = 4096
    default_topk: int = 3


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    max_batch: int = 256
    max_wait_ms: float = 2.0
    limits: ServerLimits = field(default_factory=ServerLimits)


@dataclass
class _Pending:
    queries: list[str]
    k: int
    future: asyncio.Future[list[list[Hit]]]


class MicroBatcher:
    """Collects concurrent searches into batches answered by one `retriever.search` call each."""

    def __init__(self, retriever: Retriever, max_batch: int = 256, max_wait_ms: float = 2.0) -> None:
        self.retriever = retriever
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.batches = 0
        self._queue: asyncio.Queue[_Pending] | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="retrieve")

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=False)

    async def search(self, queries: list[str], k: int) -> list[list[Hit]]:
        if self._queue is None:
            raise RuntimeError("the batcher is not running")
        future: asyncio.Future[list[list[Hit]]] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(queries, k, future))
        return await future

    async def _collect(self) -> list[_Pending]:
        assert self._queue is not None
        batch = [await self._queue.get()]
        size = len(batch[0].queries)
        deadline = time.monotonic() + self.max_wait
        while size < self.max_batch:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
            batch.append(item)
            size += len(item.queries)
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            queries = [q for item in batch for q in item.queries]
            k = max(item.k for item in batch)
            try:
                results = await loop.run_in_executor(self._executor, self.retriever.search, queries, k)
            except Exception as exc:
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            self.batches += 1
            offset = 0
            for item in batch:
                part = [hits[: item.k] for hits in results[offset : offset + len(item.queries)]]
                offset += len(item.queries)
                if not item.future.done():
                    item.future.set_result(part)


def create_app(
    retriever: Retriever, config: ServerConfig | None = None, info: dict[str, Any] | None = None
) -> Any:
    """The FastAPI application serving `retriever`; `info` is shown under `index` by `GET /info`."""
    config = config or ServerConfig()
    limits = config.limits
    batcher = MicroBatcher(retriever, config.max_batch, config.max_wait_ms)

    @contextlib.asynccontextmanager
    async def lifespan(_: Any) -> Any:
        await batcher.start()
        yield
        await batcher.stop()

    def check_token(request: Request) -> None:
        if config.token and request.headers.get("authorization") != f"Bearer {config.token}":
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    app = FastAPI(title="agentrl retrieval server", lifespan=lifespan, dependencies=[Depends(check_token)])
    app.state.batcher = batcher

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "batches": batcher.batches}

    @app.get("/info")
    async def describe() -> dict[str, Any]:
        return {"retriever": type(retriever).__name__, "limits": asdict(limits), "index": info or {}}

    @app.post("/retrieve")
    async def retrieve(body: RetrieveRequest) -> dict[str, Any]:
        k = limits.default_topk if body.topk is None else body.topk
        if not 1 <= k <= limits.max_topk:
            raise HTTPException(422, f"topk must be between 1 and {limits.max_topk}, got {k}")
        if len(body.queries) > limits.max_queries:
            raise HTTPException(
                422,
                f"at most {limits.max_queries} queries per request, got {len(body.queries)}; split the batch",
            )
        for i, query in enumerate(body.queries):
            if len(query) > limits.max_query_chars:
                raise HTTPException(
                    422, f"queries[{i}] has {len(query)} characters; the limit is {limits.max_query_chars}"
                )
        if not body.queries:
            return {"result": []}
        try:
            results = await batcher.search(body.queries, k)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        if body.return_scores:
            return {
                "result": [
                    [{"document": {"id": h.id, "contents": h.contents}, "score": h.score} for h in hits]
                    for hits in results
                ]
            }
        return {"result": [[{"id": h.id, "contents": h.contents} for h in hits] for hits in results]}

    return app


def serve(retriever: Retriever, config: ServerConfig, info: dict[str, Any] | None = None) -> None:
    """Run the server in the foreground until interrupted."""
    import uvicorn

    uvicorn.run(create_app(retriever, config, info), host=config.host, port=config.port, log_level="info")


class ServerThread:
    """Run the server in a background thread (tests, benchmarks, notebooks).

    >>> with ServerThread(retriever, ServerConfig(port=0)) as server:
    ...     HttpRetriever(server.url).search(["q"], 3)
    """

    def __init__(
        self, retriever: Retriever, config: ServerConfig | None = None, info: dict[str, Any] | None = None
    ):
        import uvicorn

        self.config = config or ServerConfig()
        app = create_app(retriever, self.config, info)
        self._server = uvicorn.Server(
            uvicorn.Config(
                app, host=self.config.host, port=self.config.port, log_level="warning", backlog=4096
            )
        )
        self._thread = threading.Thread(target=self._server.run, name="retrieval-server", daemon=True)
        self.url = ""

    def __enter__(self) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the retrieval server did not start")
            time.sleep(0.02)
        sockets = [s for server in self._server.servers for s in server.sockets]
        host, port = sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
