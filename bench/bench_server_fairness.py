"""Retrieval-server fairness: latency of one-query requests while one maximal request is being searched.

Starts the server (`ServerThread`) over a dense index built with the bundled MiniLM from the synthetic world's
documents, then measures, for a stream of one-query requests sent every `--interval-ms`:
- their p50 / p99 / max latency with the server otherwise idle;
- the same while one maximal request runs: `--big-queries` queries (the server's `max_queries`) of
  `--query-chars` characters each (its `max_query_chars`), within the body limit, searched `--max-batch`
  queries a chunk;
and the big request's own time, alone and with the stream beside it. With requests taking turns, a one-query
request waits for about the chunk in progress, so the target is p99 running <= about one chunk's time.

    .venv/bin/python bench/bench_server_fairness.py
    .venv/bin/python bench/bench_server_fairness.py --big-queries 512 --small 20 --skip-alone   # quick
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from environments.synthetic_world import build_world  # noqa: E402
from retrievers.build import BuildConfig, build_index  # noqa: E402
from retrievers.dense import DenseRetriever  # noqa: E402
from retrievers.server import ServerConfig, ServerLimits, ServerThread  # noqa: E402

MODEL = "bundled:all-minilm-l6-v2"


def build_corpus_index(work: Path, entities: int, max_length: int) -> Path:
    """A dense Flat index over the synthetic world's documents; returns its directory."""
    corpus = work / "world.jsonl"
    with corpus.open("w", encoding="utf-8") as handle:
        for doc in build_world(0, entities).documents:
            handle.write(json.dumps(doc) + "\n")
    out = work / "index"
    build_index(
        BuildConfig(str(corpus), str(out), encoder=MODEL, max_length=max_length, device="cpu", progress=False)
    )
    return out


def questions(entities: int) -> list[str]:
    return [task.question for task in build_world(0, entities).tasks]


def long_queries(base: list[str], count: int, chars: int) -> list[str]:
    """`count` distinct queries of exactly `chars` characters, each a question repeated to length."""
    out = []
    for i in range(count):
        text = f"{base[i % len(base)]} (rollout {i}) "
        out.append((text * (chars // len(text) + 1))[:chars])
    return out


@dataclass
class Timings:
    """Seconds: one-query latencies idle and beside the big request; the big request alone and beside them."""

    idle: list[float]
    running: list[float]
    alone: float | None
    beside: float


async def post(client: httpx.AsyncClient, queries: list[str], k: int) -> float:
    """Seconds one `/retrieve` request takes; raises unless it is answered 200."""
    start = time.perf_counter()
    response = await client.post("/retrieve", json={"queries": queries, "topk": k})
    response.raise_for_status()
    return time.perf_counter() - start


async def stream(
    client: httpx.AsyncClient,
    base: list[str],
    interval: float,
    k: int,
    count: int | None = None,
    until: asyncio.Task[float] | None = None,
) -> list[float]:
    """Latencies of one-query requests sent every `interval` seconds: `count` of them, or as many as are sent
    before `until` finishes."""
    tasks: list[asyncio.Task[float]] = []
    while (count is None or len(tasks) < count) and not (until is not None and until.done()):
        tasks.append(asyncio.create_task(post(client, [base[len(tasks) % len(base)]], k)))
        await asyncio.sleep(interval)
    return list(await asyncio.gather(*tasks))


async def measure(url: str, args: argparse.Namespace, base: list[str], big: list[str]) -> Timings:
    # No keep-alive: a pooled connection idle past the server's keep-alive timeout may close under a request.
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=0)
    interval = args.interval_ms / 1000
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        await post(client, base[:8], args.k)
        idle = await stream(client, base, interval, args.k, count=args.small)
        alone = None if args.skip_alone else await post(client, big, args.k)
        big_task = asyncio.create_task(post(client, big, args.k))
        await asyncio.sleep(args.lead_s)
        running = await stream(client, base, interval, args.k, until=big_task)
        return Timings(idle, running, alone, await big_task)


def row(name: str, seconds: list[float]) -> str:
    ms = np.asarray(seconds) * 1000
    p50, p99 = np.percentile(ms, [50, 99])
    return f"  {name:<22} {len(ms):5d} {p50:9.1f} {p99:9.1f} {ms.max():9.1f}"


def report(timings: Timings, chunks: int) -> None:
    chunk = timings.beside / chunks
    print(f"\none-query requests       {'n':>5} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9}")
    print(row("server idle", timings.idle))
    print(row("big request running", timings.running))
    print("\nbig request")
    if timings.alone is not None:
        print(f"  alone                  {timings.alone:8.2f} s")
    print(f"  beside the stream      {timings.beside:8.2f} s   ({chunk * 1000:.0f} ms a chunk)")
    p99_idle = float(np.percentile(timings.idle, 99))
    p99_running = float(np.percentile(timings.running, 99))
    print("\nratios")
    print(f"  p99 running / p99 idle         {p99_running / p99_idle:8.1f}")
    print(f"  p99 running / chunk time       {p99_running / chunk:8.2f}   (target <= about 1)")
    if timings.alone is not None:
        print(f"  big request beside / alone     {timings.beside / timings.alone:8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--entities", type=int, default=600, help="synthetic-world documents in the index")
    parser.add_argument("--max-length", type=int, default=128, help="encoder max length (tokens)")
    parser.add_argument("--max-batch", type=int, default=ServerConfig().max_batch)
    parser.add_argument(
        "--big-queries",
        type=int,
        default=1024,
        help="queries of the maximal request (the server's max_queries)",
    )
    parser.add_argument("--query-chars", type=int, default=ServerLimits().max_query_chars)
    parser.add_argument("--small", type=int, default=60, help="one-query requests with the server idle")
    parser.add_argument("--interval-ms", type=float, default=100.0, help="gap between one-query requests")
    parser.add_argument("--lead-s", type=float, default=0.5, help="head start of the big request")
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--skip-alone", action="store_true", help="do not time the big request on its own")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="agentrl-bench-"))
    index = build_corpus_index(work, args.entities, args.max_length)
    base = questions(args.entities)
    big = long_queries(base, args.big_queries, args.query_chars)
    body = len(json.dumps({"queries": big, "topk": args.k}).encode())
    limits = ServerLimits(max_queries=args.big_queries, max_query_chars=args.query_chars)
    if body > limits.max_body_bytes:
        parser.error(f"the big request's body ({body} bytes) exceeds the {limits.max_body_bytes}-byte limit")
    chunks = math.ceil(args.big_queries / args.max_batch)
    print(
        f"{args.entities} synthetic-world passages, bundled MiniLM, max_length {args.max_length}; "
        f"server max_batch {args.max_batch}\n"
        f"big request: {args.big_queries} queries x {args.query_chars} chars = {body / 2**20:.1f} MiB "
        f"(limit {limits.max_body_bytes / 2**20:.0f} MiB), {chunks} chunks; "
        f"one-query requests every {args.interval_ms:.0f} ms"
    )
    config = ServerConfig(port=0, max_batch=args.max_batch, limits=limits)
    with ServerThread(DenseRetriever.load(index, device="cpu"), config) as server:
        timings = asyncio.run(measure(server.url, args, base, big))
    report(timings, chunks)


if __name__ == "__main__":
    main()
