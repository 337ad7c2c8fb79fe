"""Hybrid retrieval: dense and BM25 rankings merged with reciprocal-rank fusion (RRF).

A document's fused score is `sum over rankings of 1 / (rrf_k + rank)` with 1-based ranks; each ranking
contributes its top `depth` documents (default `max(2k, 20)`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from retrievers.base import Hit, check_query_text
from retrievers.bm25 import BM25Retriever
from retrievers.dense import DenseRetriever, hits_from_rows
from retrievers.index_meta import read_meta


def rrf_merge(rankings: list[np.ndarray], k: int, rrf_k: float = 60.0) -> tuple[np.ndarray, np.ndarray]:
    """Fuse row rankings of one query ([depth] arrays, -1 = empty) into (scores [<=k], rows [<=k])."""
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, row in enumerate(ranking, start=1):
            if row >= 0:
                fused[int(row)] = fused.get(int(row), 0.0) + 1.0 / (rrf_k + rank)
    best = sorted(fused.items(), key=lambda item: (-item[1], item[0]))[:k]
    return np.array([s for _, s in best], dtype=np.float32), np.array([r for r, _ in best], dtype=np.int64)


class HybridRetriever:
    """`Retriever` fusing a `DenseRetriever` and a `BM25Retriever` over the same document store."""

    def __init__(
        self, dense: DenseRetriever, bm25: BM25Retriever, rrf_k: float = 60.0, depth: int | None = None
    ) -> None:
        self.dense = dense
        self.bm25 = bm25
        self.docs = dense.docs
        self.rrf_k = rrf_k
        self.depth = depth

    @classmethod
    def load(
        cls, index_dir: str | Path, meta: dict[str, Any] | None = None, **dense_kwargs: Any
    ) -> HybridRetriever:
        meta = meta or read_meta(index_dir)
        rrf_k = float(meta.get("hybrid", {}).get("rrf_k", 60.0))
        dense = DenseRetriever.load(index_dir, meta=meta, **dense_kwargs)
        return cls(dense, BM25Retriever.load(index_dir, meta=meta), rrf_k=rrf_k)

    def search(self, queries: list[str], k: int) -> list[list[Hit]]:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        check_query_text(queries)
        if not queries:
            return []
        depth = self.depth or max(2 * k, 20)
        _, dense_rows = self.dense.search_vectors(self.dense.encode_queries(queries), depth)
        _, sparse_rows = self.bm25.search_rows(queries, depth)
        width = min(k, len(self.docs))
        scores = np.zeros((len(queries), width), dtype=np.float32)
        rows = np.full((len(queries), width), -1, dtype=np.int64)
        for i in range(len(queries)):
            s, r = rrf_merge([dense_rows[i], sparse_rows[i]], width, self.rrf_k)
            scores[i, : len(r)] = s
            rows[i, : len(r)] = r
        return hits_from_rows(self.docs, scores, rows)
