"""A dependency-free BM25 retriever over a small in-memory document list.

Meant for per-task corpora (HotpotQA distractor paragraphs), the synthetic world in tests and quickstart, and
any corpus of up to some tens of thousands of passages. Large corpora use the on-disk indexes of this package.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping

import numpy as np

from retrievers.base import Hit

_TOKEN = re.compile(r"\w+", re.UNICODE)
_STOPWORDS = frozenset(
    "a an and are as at be by for from has have in is it its of on or that the to was were what when where "
    "which who whom whose why how with did does do".split()
)


def tokenize(text: str) -> list[str]:
    """Lowercased word tokens without common English stopwords."""
    return [t for t in _TOKEN.findall(text.lower()) if t not in _STOPWORDS]


class InMemoryRetriever:
    """Okapi BM25 (k1=1.5, b=0.75) over documents held in memory; titles are indexed with the text.

    Args:
        documents: mappings with `id`, `title` and `text` (title may be empty).
        k1, b: the BM25 parameters.
    """

    def __init__(self, documents: Iterable[Mapping[str, str]], k1: float = 1.5, b: float = 0.75) -> None:
        self.documents = [
            {"id": str(d["id"]), "title": str(d.get("title", "")), "text": str(d["text"])} for d in documents
        ]
        self.k1 = k1
        self.b = b
        self._postings: dict[str, list[tuple[int, int]]] = {}
        lengths = np.zeros(len(self.documents), dtype=np.float64)
        for i, doc in enumerate(self.documents):
            counts = Counter(tokenize(f"{doc['title']} {doc['text']}"))
            lengths[i] = sum(counts.values())
            for term, tf in counts.items():
                self._postings.setdefault(term, []).append((i, tf))
        self._lengths = lengths
        self._avg_length = float(lengths.mean()) if len(lengths) else 0.0
        n = len(self.documents)
        self._idf = {
            term: math.log(1.0 + (n - len(p) + 0.5) / (len(p) + 0.5)) for term, p in self._postings.items()
        }

    def __len__(self) -> int:
        return len(self.documents)

    def scores(self, query: str) -> np.ndarray:
        """[num_documents] BM25 score of every document for `query`."""
        scores = np.zeros(len(self.documents), dtype=np.float64)
        norm = self.k1 * (1.0 - self.b + self.b * self._lengths / max(self._avg_length, 1e-9))
        for term in set(tokenize(query)):
            postings = self._postings.get(term)
            if not postings:
                continue
            idx = np.fromiter((p[0] for p in postings), dtype=np.int64, count=len(postings))
            tf = np.fromiter((p[1] for p in postings), dtype=np.float64, count=len(postings))
            scores[idx] += self._idf[term] * tf * (self.k1 + 1.0) / (tf + norm[idx])
        return scores

    def search(self, queries: list[str], k: int) -> list[list[Hit]]:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        results: list[list[Hit]] = []
        for query in queries:
            scores = self.scores(query)
            top = min(k, len(scores))
            order = np.argsort(-scores, kind="stable")[:top]
            results.append(
                [
                    Hit(
                        id=self.documents[i]["id"],
                        title=self.documents[i]["title"],
                        text=self.documents[i]["text"],
                        score=float(scores[i]),
                    )
                    for i in order
                ]
            )
        return results
