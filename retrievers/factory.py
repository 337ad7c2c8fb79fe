"""`open_retriever`: one call opening any index directory (dense, BM25, hybrid) or a retrieval server URL."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from agentrl.core.registry import Registry
from retrievers.base import Retriever
from retrievers.index_meta import read_meta

RetrieverLoader = Callable[..., Retriever]
RETRIEVER_LOADERS: Registry[RetrieverLoader] = Registry("index kind")


@RETRIEVER_LOADERS.register("dense")
def _load_dense(path: Path, meta: dict[str, Any], **kwargs: Any) -> Retriever:
    from retrievers.dense import DenseRetriever

    return DenseRetriever.load(path, meta=meta, **kwargs)


@RETRIEVER_LOADERS.register("bm25")
def _load_bm25(path: Path, meta: dict[str, Any], **kwargs: Any) -> Retriever:
    from retrievers.bm25 import BM25Retriever

    return BM25Retriever.load(path, meta=meta, **kwargs)


@RETRIEVER_LOADERS.register("hybrid")
def _load_hybrid(path: Path, meta: dict[str, Any], **kwargs: Any) -> Retriever:
    from retrievers.hybrid import HybridRetriever

    return HybridRetriever.load(path, meta=meta, **kwargs)


def open_retriever(path_or_url: str | Path, **kwargs: Any) -> Retriever:
    """A `Retriever` for an index directory (its `meta.json` says which kind) or an `http(s)://` server URL.

    Keyword arguments go to the loader: e.g. `device`, `nprobe`, `ef_search`, `mmap` for dense indexes;
    `token`, `timeout`, `retries` for URLs.
    """
    target = str(path_or_url)
    if target.startswith(("http://", "https://")):
        from retrievers.client import HttpRetriever

        return HttpRetriever(target, **kwargs)
    path = Path(target).expanduser()
    meta = read_meta(path)
    return RETRIEVER_LOADERS.get(str(meta.get("kind")))(path, meta, **kwargs)
