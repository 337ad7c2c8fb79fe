"""A Search-R1-compatible retrieval server (FastAPI + uvicorn) in front of any `Retriever`.

`POST /retrieve` takes Search-R1's request `{"queries": [...], "topk": k, "return_scores": bool}` and answers
`{"result": [[{"document": {"id", "contents"}, "score": s}, ...], ...]}` with scores, or
`{"result": [[{"id", "contents"}, ...], ...]}` without. Each document is the corpus row as stored where the
index keeps it (`Hit.document`): `contents` exactly as in the corpus file, and any other fields of the row.
`GET /health` and `GET /info` describe the server. A request body larger than `max_body_bytes` is answered
413 before it is read (`BodyLimit`).

Concurrent requests are micro-batched: a worker takes the requests waiting (up to `max_batch` queries,
waiting at most `max_wait_ms` for more after the first) and answers them with one encode + search. A request
larger than `max_batch` is searched `max_batch` queries at a time, so one encode + search never holds more
than `max_batch` queries whatever the request size (the encoder then works through them in micro-batches of
its own), and requests take turns: one that arrives while a large request is being searched is answered by
the next batch, before the large request's next chunk. Every request is validated before it joins a batch,
and a batch that fails is answered request by request, so a failure reaches only the request that caused it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, StrictInt

from retrievers.base import Hit, Retriever, check_query_text


class RetrieveRequest(BaseModel):
    """Search-R1's request body; `topk` left out, null or 0 means the server's `default_topk`. `topk` must be
    a JSON integer (not true, 3.5 or NaN) and other fields are refused, so a misspelt one is not ignored."""

    model_config = ConfigDict(extra="forbid")

    queries: list[str]
    topk: StrictInt | None = None
    return_scores: bool = False


@dataclass
class ServerLimits:
    """Per-request limits.

    Attributes:
        max_queries: most queries in one request (more: 422). The default admits Search-R1's GRPO recipe
            (512 prompts x 5 rollouts = 2,560 queries) with room to spare; see the module docstring for why a
            large request does not need memory in proportion to it beyond its own answer.
        max_topk: largest `topk` (more: 422).
        max_query_chars: longer queries are cut to this many characters before encoding (not refused); the
            encoder then truncates each query to its `max_length` tokens, as Search-R1's server does.
        default_topk: `topk` used when a request leaves it out or sends 0.
        max_body_bytes: largest request body (more: 413, refused from its Content-Length before it is read,
            or as soon as a chunked body grows past it). 16 MiB admits the GRPO recipe's 2,560 queries up to
            about 6,500 characters each, and 16,384 queries of about 1,000.
    """

    max_queries: int = 16384
    max_topk: int = 100
    max_query_chars: int = 4096
    default_topk: int = 3
    max_body_bytes: int = 16 * 2**20


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    max_batch: int = 256
    max_wait_ms: float = 2.0
    limits: ServerLimits = field(default_factory=ServerLimits)

    def check(self) -> None:
        """Refuse settings under which the server could not start or would refuse every request; the
        ValueError names the `agentrl serve-retriever` option."""
        limits = self.limits
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--port must be between 0 and 65535 (0: any free port), got {self.port}")
        for option, value in (
            ("--max-batch", self.max_batch),
            ("--max-queries", limits.max_queries),
            ("--max-topk", limits.max_topk),
            ("--max-query-chars", limits.max_query_chars),
            ("--max-body-bytes", limits.max_body_bytes),
        ):
            if value < 1:
                raise ValueError(f"{option} must be at least 1, got {value}")
        if not 1 <= limits.default_topk <= limits.max_topk:
            raise ValueError(
                f"--default-topk must be between 1 and --max-topk ({limits.max_topk}), "
                f"got {limits.default_topk}"
            )
        if not (math.isfinite(self.max_wait_ms) and self.max_wait_ms >= 0):
            raise ValueError(f"--max-wait-ms must be a finite number >= 0, got {self.max_wait_ms}")


@dataclass
class _Pending:
    """A request in the batcher: its queries, how many of them have joined a batch, the hits so far."""

    queries: list[str]
    k: int
    future: asyncio.Future[list[list[Hit]]]
    taken: int = 0
    hits: list[list[Hit]] = field(default_factory=list)

    @property
    def untaken(self) -> int:
        return len(self.queries) - self.taken

    def deliver(self, hits: list[list[Hit]]) -> None:
        """Add the hits of the request's next queries; the request is answered once it has them all."""
        self.hits.extend(query_hits[: self.k] for query_hits in hits)
        if len(self.hits) == len(self.queries):
            _resolve(self.future, self.hits)


@dataclass
class _Part:
    """Queries `start:stop` of one request, as one batch holds them."""

    request: _Pending
    start: int
    stop: int

    @property
    def queries(self) -> list[str]:
        return self.request.queries[self.start : self.stop]


class MicroBatcher:
    """Collects concurrent searches into batches answered by one `retriever.search` call each.

    A batch holds at most `max_batch` queries, either of new requests (not searched yet), packed in arrival
    order, or of requests under way (larger than one batch), which take turns, the one served longest ago
    first. While both wait, the two kinds of batch alternate. So a large request is searched `max_batch`
    queries at a time, a request that arrives meanwhile is answered once the batch in progress is done
    (without waiting for a batch's worth of the large request's queries), and a steady stream of new
    requests cannot hold a large request back for more than every other batch. When a call raises, each
    request's part of it is searched on its own, so the exception reaches only the request whose queries
    raise it; the rest of that request is then not searched.
    """

    def __init__(self, retriever: Retriever, max_batch: int = 256, max_wait_ms: float = 2.0) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.retriever = retriever
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.batches = 0
        self._new: collections.deque[_Pending] = collections.deque()
        self._under_way: collections.deque[_Pending] = collections.deque()
        self._passed_over = False  # the last batch was of new requests while others were under way
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="retrieve")

    async def start(self) -> None:
        self._arrived = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=False)

    async def search(self, queries: list[str], k: int) -> list[list[Hit]]:
        """Hits for `queries`, in order; raises what the retriever raised for these queries."""
        if self._arrived is None:
            raise RuntimeError("the batcher is not running")
        if not queries:
            return []
        future: asyncio.Future[list[list[Hit]]] = asyncio.get_running_loop().create_future()
        self._new.append(_Pending(list(queries), k, future))
        self._arrived.set()
        return await future

    def _waiting(self) -> int:
        """Queries of live requests that have not joined a batch yet."""
        return sum(r.untaken for r in (*self._new, *self._under_way) if not r.future.done())

    async def _wait_for_arrival(self, timeout: float | None) -> None:
        assert self._arrived is not None
        self._arrived.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._arrived.wait(), timeout)

    async def _collect(self) -> list[_Part]:
        """The next batch, once a request waits and `max_batch` queries wait or `max_wait` has passed."""
        while not self._waiting():
            await self._wait_for_arrival(None)
        deadline = time.monotonic() + self.max_wait
        while self._waiting() < self.max_batch and (left := deadline - time.monotonic()) > 0:
            await self._wait_for_arrival(left)
        return self._plan()

    def _plan(self) -> list[_Part]:
        """The next batch: new requests, unless none wait or the last batch passed over requests under way;
        then requests under way. A request with queries left after it goes to the back of the requests under
        way; requests whose caller is gone are dropped."""
        self._new = collections.deque(r for r in self._new if not r.future.done())
        self._under_way = collections.deque(r for r in self._under_way if not r.future.done())
        serve_new = bool(self._new) and not self._passed_over
        self._passed_over = serve_new and bool(self._under_way)
        source = self._new if serve_new else self._under_way
        batch: list[_Part] = []
        room, unfinished = self.max_batch, []
        while source and room:
            request = source.popleft()
            take = min(request.untaken, room)
            batch.append(_Part(request, request.taken, request.taken + take))
            request.taken += take
            room -= take
            if request.untaken:
                unfinished.append(request)
        self._under_way.extend(unfinished)
        return batch

    async def _search(self, queries: list[str], k: int) -> list[list[Hit]]:
        loop = asyncio.get_running_loop()
        results = await loop.run_in_executor(self._executor, self.retriever.search, queries, k)
        if len(results) != len(queries):
            raise RuntimeError(
                f"the retriever answered {len(results)} result lists for {len(queries)} queries"
            )
        return results

    async def _run(self) -> None:
        while True:
            batch = await self._collect()
            if batch:
                await self._answer(batch)

    async def _answer(self, batch: list[_Part]) -> None:
        """Search a batch with one call and hand each request its part of the hits."""
        queries = [q for part in batch for q in part.queries]
        try:
            results = await self._search(queries, max(part.request.k for part in batch))
        except Exception as exc:
            await self._answer_each(batch, exc)
            return
        self.batches += 1
        offset = 0
        for part in batch:
            part.request.deliver(results[offset : offset + part.stop - part.start])
            offset += part.stop - part.start

    async def _answer_each(self, batch: list[_Part], exc: Exception) -> None:
        """Answer the parts of a failed batch one by one, so each request gets its own result or exception."""
        if len(batch) == 1:
            _reject(batch[0].request.future, exc)
            return
        for part in batch:
            if part.request.future.done():
                continue
            try:
                hits = await self._search(part.queries, part.request.k)
            except Exception as own:
                _reject(part.request.future, own)
                continue
            self.batches += 1
            part.request.deliver(hits)


def _resolve(future: asyncio.Future[list[list[Hit]]], result: list[list[Hit]]) -> None:
    if not future.done():
        future.set_result(result)


def _reject(future: asyncio.Future[list[list[Hit]]], exc: Exception) -> None:
    if not future.done():
        future.set_exception(exc)


class RequestError(ValueError):
    """A request the server will not answer: 422 with a message naming the field."""


def resolve_topk(topk: int | None, limits: ServerLimits) -> int:
    """`topk` of a request: None or 0 take `default_topk` (as Search-R1's server does); others are checked."""
    k = topk or limits.default_topk
    if not 1 <= k <= limits.max_topk:
        raise RequestError(f"topk must be between 1 and {limits.max_topk} (0 for the default), got {k}")
    return k


def prepare_queries(queries: list[str], limits: ServerLimits) -> list[str]:
    """Check a request's queries before they join a batch; over-long queries are cut to `max_query_chars`.

    Raises `RequestError` naming the first bad query: too many queries, or text that is not valid Unicode
    (a lone surrogate such as "\\ud800", which JSON allows but no tokenizer accepts).
    """
    if len(queries) > limits.max_queries:
        raise RequestError(
            f"at most {limits.max_queries} queries per request, got {len(queries)}; split the batch"
        )
    try:
        check_query_text(queries)
    except ValueError as exc:
        raise RequestError(str(exc)) from None
    return [query[: limits.max_query_chars] for query in queries]


class BodyLimit:
    """ASGI middleware refusing, with 413, a request whose body is larger than `max_bytes`.

    A Content-Length over the limit is refused before a byte of the body is read; a chunked body is read up
    to the limit and refused as soon as it passes it. The refusal leaves the connection open (the server
    discards the rest of that body), so a keep-alive client can go on with its next request. Bodies within
    the limit are read whole and handed on to the application unchanged.
    """

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = declared_length(scope)
        messages = None if declared is not None and declared > self.max_bytes else await self._read(receive)
        if messages is None:
            await self._refuse(scope, receive, send)
            return
        await self.app(scope, replay(messages, receive), send)

    async def _read(self, receive: Any) -> list[dict[str, Any]] | None:
        """The request's body messages, None once they hold more than `max_bytes`."""
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return messages
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                return None
            if not message.get("more_body", False):
                return messages

    async def _refuse(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        detail = (
            f"request body is larger than the server's limit of {self.max_bytes} bytes (--max-body-bytes); "
            "send fewer or shorter queries per request"
        )
        await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)


def declared_length(scope: dict[str, Any]) -> int | None:
    """The request's Content-Length, None when it has none (a chunked body) or one that is not a number."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            with contextlib.suppress(ValueError):
                return int(value)
    return None


def replay(messages: list[dict[str, Any]], receive: Any) -> Any:
    """An ASGI `receive` that hands out `messages` first, then whatever `receive` brings."""
    pending = collections.deque(messages)

    async def next_message() -> dict[str, Any]:
        return pending.popleft() if pending else await receive()

    return next_message


def validation_details(errors: Any) -> list[dict[str, Any]]:
    """Pydantic's errors as JSON-safe `{"loc", "msg", "type"}` entries: the raw input is left out (a NaN or
    Infinity there cannot be written as JSON) and a non-finite number is named in the message instead."""
    details = []
    for error in errors:
        loc = [str(part) for part in error.get("loc", ()) if part != "body"]
        msg = str(error.get("msg", "invalid value"))
        value = error.get("input")
        if isinstance(value, float) and not math.isfinite(value):
            msg = f"{msg}, got {value} (JSON numbers must be finite)"
        details.append({"loc": loc, "msg": f"{'.'.join(loc) or 'body'}: {msg}", "type": error.get("type")})
    return details


def bearer_token_matches(header: str | None, token: str) -> bool:
    """Whether an `Authorization` header carries `token` (scheme case-insensitive, constant-time compare)."""
    scheme, _, value = (header or "").strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())


def create_app(
    retriever: Retriever, config: ServerConfig | None = None, info: dict[str, Any] | None = None
) -> Any:
    """The FastAPI application serving `retriever`; `info` is shown under `index` by `GET /info`."""
    config = config or ServerConfig()
    config.check()
    limits = config.limits
    batcher = MicroBatcher(retriever, config.max_batch, config.max_wait_ms)

    @contextlib.asynccontextmanager
    async def lifespan(_: Any) -> Any:
        await batcher.start()
        yield
        await batcher.stop()

    def check_token(request: Request) -> None:
        if config.token and not bearer_token_matches(request.headers.get("authorization"), config.token):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    app = FastAPI(title="agentrl retrieval server", lifespan=lifespan, dependencies=[Depends(check_token)])
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    app.state.batcher = batcher

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": validation_details(exc.errors())}, status_code=422)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "batches": batcher.batches}

    @app.get("/info")
    async def describe() -> dict[str, Any]:
        return {"retriever": type(retriever).__name__, "limits": asdict(limits), "index": info or {}}

    @app.post("/retrieve")
    async def retrieve(body: RetrieveRequest) -> dict[str, Any]:
        try:
            k = resolve_topk(body.topk, limits)
            queries = prepare_queries(body.queries, limits)
        except RequestError as exc:
            raise HTTPException(422, str(exc)) from None
        if not queries:
            return {"result": []}
        try:
            results = await batcher.search(queries, k)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        except Exception as exc:
            raise HTTPException(500, f"search failed: {type(exc).__name__}: {exc}") from None
        if body.return_scores:
            return {
                "result": [[{"document": h.document(), "score": h.score} for h in hits] for hits in results]
            }
        return {"result": [[h.document() for h in hits] for hits in results]}

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
