"""Dense retrieval with FAISS: any `index_factory` string, inner product, rows mapped to the document store.

Built from the embedding shards written by `retrievers.build`; searched by `DenseRetriever`, which re-creates
the index's encoder from `meta.json` so queries are encoded exactly as the passages were.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retrievers.base import Hit, check_query_text
from retrievers.docstore import DocStore
from retrievers.encoders import Encoder, EncoderSpec
from retrievers.index_meta import DOCS_FILE, FAISS_FILE, read_meta

_PQ_CODES = 256  # a PQ sub-quantizer with 8 bits needs at least this many training vectors


def check_index_type(index_type: str, num_vectors: int, dim: int) -> None:
    """Raise a clear error when faiss cannot build `index_type` for vectors of size `dim`, or cannot train
    it on `num_vectors` of them."""
    ivf = re.search(r"IVF(\d+)", index_type)
    if ivf:
        nlist = int(ivf.group(1))
        if num_vectors < nlist:
            suggestion = max(1, int(4 * np.sqrt(max(num_vectors, 1))))
            raise ValueError(
                f"index type {index_type!r} has {nlist} IVF lists but the corpus has only {num_vectors} "
                f"passages (need at least one per list, ideally 39 or more); use IVF{suggestion} or Flat"
            )
    pq = re.search(r"PQ(\d+)", index_type)
    if pq:
        m = int(pq.group(1))
        if m == 0 or dim % m:
            raise ValueError(
                f"index type {index_type!r}: PQ{m} needs the dimension {dim} to be a multiple of {m}"
            )
        if num_vectors < _PQ_CODES:
            raise ValueError(
                f"index type {index_type!r}: product quantization needs at least {_PQ_CODES} passages "
                f"to train, "
                f"the corpus has {num_vectors}; use Flat or HNSW32"
            )
    new_index(index_type, dim)


def new_index(index_type: str, dim: int) -> Any:
    import faiss

    try:
        return faiss.index_factory(dim, index_type, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise ValueError(f"faiss cannot build index type {index_type!r}: {str(exc).strip()[:300]}") from None


def training_sample(shards: Sequence[Path], size: int, seed: int = 0) -> np.ndarray:
    """[<= size, dim] float32 vectors drawn uniformly from the shards (memory-mapped, read one by one)."""
    counts = [int(np.load(p, mmap_mode="r").shape[0]) for p in shards]
    total = sum(counts)
    take = min(size, total)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(total, size=take, replace=False))
    parts, offset = [], 0
    for path, count in zip(shards, counts, strict=True):
        local = chosen[(chosen >= offset) & (chosen < offset + count)] - offset
        if len(local):
            parts.append(np.asarray(np.load(path, mmap_mode="r")[local], dtype=np.float32))
        offset += count
    return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)


def build_faiss(
    index_type: str, shards: Sequence[Path], dim: int, train_size: int = 262_144, use_gpu: bool = False
) -> Any:
    """A trained FAISS index holding every shard's vectors in row order (CPU index, ready to write)."""
    import faiss

    num = sum(int(np.load(p, mmap_mode="r").shape[0]) for p in shards)
    check_index_type(index_type, num, dim)
    index = new_index(index_type, dim)
    work = to_gpu(index) if use_gpu else index
    if not index.is_trained:
        work.train(training_sample(shards, train_size))
    for path in shards:
        work.add(np.ascontiguousarray(np.load(path), dtype=np.float32))
    return faiss.index_gpu_to_cpu(work) if work is not index else index


def gpu_count() -> int:
    try:
        import faiss

        return int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0
    except ImportError:
        return 0


def to_gpu(index: Any) -> Any:
    """Shard `index` over every visible GPU (faiss-gpu); returns `index` unchanged without GPUs."""
    import faiss

    if gpu_count() == 0:
        return index
    if type(index).__name__.startswith("IndexHNSW"):
        return index  # faiss-gpu has no HNSW; keep it on the CPU
    options = faiss.GpuMultipleClonerOptions()
    options.shard = True
    options.useFloat16 = True
    return faiss.index_cpu_to_all_gpus(index, co=options)


class DenseRetriever:
    """`Retriever` over a FAISS index, an encoder and a document store.

    Args:
        encoder: encodes queries with the index's conventions.
        index: a FAISS index whose ids are document-store rows.
        docs: the document store.
        nprobe, ef_search: search-time knobs for IVF / HNSW indexes (None keeps the defaults).
    """

    def __init__(
        self,
        encoder: Encoder,
        index: Any,
        docs: DocStore,
        nprobe: int | None = None,
        ef_search: int | None = None,
    ) -> None:
        self.encoder = encoder
        self.index = index
        self.docs = docs
        self._set_search_params(nprobe, ef_search)

    @classmethod
    def load(
        cls,
        index_dir: str | Path,
        device: str = "auto",
        use_gpu: bool = False,
        mmap: bool = False,
        nprobe: int | None = None,
        ef_search: int | None = None,
        meta: dict[str, Any] | None = None,
    ) -> DenseRetriever:
        """Open a dense or hybrid index directory written by `agentrl index build` or `agentrl index import`
        (whose FAISS file `meta.json` names, relative to the directory or absolute)."""
        import faiss

        index_dir = Path(index_dir)
        meta = meta or read_meta(index_dir)
        if "encoder" not in meta:
            raise ValueError(
                f"{index_dir}/meta.json has no 'encoder' field: it is a {meta.get('kind')} index"
            )
        spec = EncoderSpec.from_dict(meta["encoder"])
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
        index = faiss.read_index(str(index_dir / meta.get("dense", {}).get("file", FAISS_FILE)), flags)
        if use_gpu:
            index = to_gpu(index)
        encoder = Encoder.from_spec(spec, device=device)
        return cls(encoder, index, DocStore(index_dir / DOCS_FILE), nprobe=nprobe, ef_search=ef_search)

    def _set_search_params(self, nprobe: int | None, ef_search: int | None) -> None:
        import faiss

        if nprobe is not None:
            faiss.ParameterSpace().set_index_parameter(self.index, "nprobe", nprobe)
        if ef_search is not None:
            faiss.ParameterSpace().set_index_parameter(self.index, "efSearch", ef_search)

    def encode_queries(self, queries: Sequence[str]) -> np.ndarray:
        """[len(queries), dim] float32 query vectors, with the index's prefixes, pooling and normalization."""
        return self.encoder.encode_queries(list(queries))

    def search_vectors(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows), both [num_queries, min(k, vectors in the index)] (FAISS allocates k columns per
        query, so a huge k is clamped rather than allocated); rows are -1 where a query has fewer hits."""
        k = max(1, min(k, int(self.index.ntotal)))
        return self.index.search(np.ascontiguousarray(vectors, dtype=np.float32), k)

    def search(self, queries: list[str], k: int) -> list[list[Hit]]:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        check_query_text(queries)
        if not queries:
            return []
        scores, rows = self.search_vectors(self.encode_queries(queries), k)
        return hits_from_rows(self.docs, scores, rows)


def hits_from_rows(docs: DocStore, scores: np.ndarray, rows: np.ndarray) -> list[list[Hit]]:
    """Hits per query from [num_queries, k] score and row arrays (negative rows are skipped)."""
    flat = [int(r) for r in rows.reshape(-1) if r >= 0]
    fetched = iter(docs.get_rows(flat))
    out: list[list[Hit]] = []
    for q_scores, q_rows in zip(scores, rows, strict=True):
        hits = []
        for score, row in zip(q_scores, q_rows, strict=True):
            if row < 0:
                continue
            doc = next(fetched)
            hits.append(Hit(doc.id, doc.title, doc.text, float(score), doc.record))
        out.append(hits)
    return out
