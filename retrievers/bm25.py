"""BM25 over an index directory with `bm25s`: a sparse score matrix under `bm25/`, memory-mapped on load.

Titles are indexed together with the text; English stopwords are dropped. Row numbers of the bm25s matrix are
document-store rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from retrievers.base import Hit, check_query_text
from retrievers.dense import hits_from_rows
from retrievers.docstore import DocStore
from retrievers.index_meta import BM25_DIR, DOCS_FILE, read_meta

STOPWORDS = "en"


def _doc_text(title: str, text: str) -> str:
    return f"{title} {text}" if title else text


def build_bm25(
    docs: DocStore, out_dir: Path, k1: float = 1.5, b: float = 0.75, progress: bool = True
) -> None:
    """Index every document of `docs` and save the bm25s index in `out_dir`.

    The token ids of the whole corpus are held in memory during the build (bm25s needs them at once).
    """
    import bm25s

    texts = (_doc_text(d.title, d.text) for d in docs.iter_range())
    tokens = bm25s.tokenize(list(texts), stopwords=STOPWORDS, show_progress=progress)
    model = bm25s.BM25(k1=k1, b=b)
    model.index(tokens, show_progress=progress)
    model.save(str(out_dir), show_progress=progress)


class BM25Retriever:
    """`Retriever` over a bm25s index and the document store."""

    def __init__(self, model: Any, docs: DocStore) -> None:
        self.model = model
        self.docs = docs

    @classmethod
    def load(
        cls, index_dir: str | Path, mmap: bool = True, meta: dict[str, Any] | None = None
    ) -> BM25Retriever:
        import bm25s

        index_dir = Path(index_dir)
        meta = meta or read_meta(index_dir)
        if not (index_dir / BM25_DIR).is_dir():
            raise ValueError(f"{index_dir} has no {BM25_DIR}/ directory: it is a {meta.get('kind')} index")
        model = bm25s.BM25.load(str(index_dir / BM25_DIR), mmap=mmap, show_progress=False)
        return cls(model, DocStore(index_dir / DOCS_FILE))

    def search_rows(self, queries: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows), both [num_queries, min(k, num_docs)]; rows are -1 where a query matched nothing."""
        import bm25s

        k = min(k, len(self.docs))
        tokens = bm25s.tokenize(queries, stopwords=STOPWORDS, return_ids=False, show_progress=False)
        vocab = self.model.vocab_dict
        known = [[t for t in q if t in vocab] for q in tokens]
        rows = np.full((len(queries), k), -1, dtype=np.int64)
        scores = np.zeros((len(queries), k), dtype=np.float32)
        todo = [i for i, q in enumerate(known) if q]
        if todo and k > 0:
            found, found_scores = self.model.retrieve(
                [known[i] for i in todo], k=k, show_progress=False, n_threads=1
            )
            for j, i in enumerate(todo):
                positive = found_scores[j] > 0
                n = int(positive.sum())
                rows[i, :n] = found[j][positive]
                scores[i, :n] = found_scores[j][positive]
        return scores, rows

    def search(self, queries: list[str], k: int) -> list[list[Hit]]:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        check_query_text(queries)
        if not queries:
            return []
        scores, rows = self.search_rows(queries, k)
        return hits_from_rows(self.docs, scores, rows)
