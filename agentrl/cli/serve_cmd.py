"""`agentrl serve-retriever`: serve an index over HTTP with Search-R1's `/retrieve` API."""

from __future__ import annotations

from typing import Annotated

import typer

from agentrl.cli.errors import user_errors


def serve_retriever(
    index: Annotated[str, typer.Argument(help="Index directory built by `agentrl index build`.")],
    host: Annotated[
        str,
        typer.Option(help="Interface to bind. 127.0.0.1 keeps it local; 0.0.0.0 exposes it to the network."),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="AGENTRL_RETRIEVER_TOKEN", help="Require `Authorization: Bearer TOKEN` on every request."
        ),
    ] = None,
    max_batch: Annotated[
        int, typer.Option(help="Most queries answered by one micro-batched encode + search.")
    ] = 256,
    max_wait_ms: Annotated[
        float, typer.Option(help="How long a batch waits for more concurrent requests.")
    ] = 2.0,
    max_queries: Annotated[
        int,
        typer.Option(help="Most queries in one request (more: 422); split into --max-batch chunks."),
    ] = 16384,
    max_topk: Annotated[int, typer.Option(help="Largest topk a request may ask for (more: 422).")] = 100,
    max_query_chars: Annotated[
        int,
        typer.Option(
            help="Longer queries are cut to this many characters; the encoder truncates to its max length."
        ),
    ] = 4096,
    default_topk: Annotated[int, typer.Option(help="topk used when a request leaves it out or sends 0.")] = 3,
    max_body_bytes: Annotated[
        int,
        typer.Option(
            help="Largest request body in bytes (more: 413, refused from its Content-Length before reading)."
        ),
    ] = 16 * 2**20,
    device: Annotated[str, typer.Option(help="Query encoding device: auto, cpu, cuda:0.")] = "auto",
    nprobe: Annotated[int | None, typer.Option(help="IVF lists visited per query (IVF indexes).")] = None,
    ef_search: Annotated[int | None, typer.Option(help="HNSW search depth (HNSW indexes).")] = None,
) -> None:
    """Serve INDEX. POST /retrieve {"queries": [...], "topk": k, "return_scores": bool}, GET /health"""
    from retrievers.factory import open_retriever
    from retrievers.index_meta import read_meta
    from retrievers.server import ServerConfig, ServerLimits, serve

    with user_errors():
        limits = ServerLimits(max_queries, max_topk, max_query_chars, default_topk, max_body_bytes)
        config = ServerConfig(host, port, token, max_batch, max_wait_ms, limits)
        config.check()
        for option, value in (("--nprobe", nprobe), ("--ef-search", ef_search)):
            if value is not None and value < 1:
                raise ValueError(f"{option} must be at least 1, got {value}")
        meta = read_meta(index)
        kwargs: dict[str, object] = {}
        if "encoder" in meta:
            kwargs = {"device": device, "nprobe": nprobe, "ef_search": ef_search}
        retriever = open_retriever(index, **kwargs)
    typer.echo(f"serving {meta['kind']} index {index} ({meta['num_docs']} documents) on http://{host}:{port}")
    serve(retriever, config, info=meta)
