"""The retriever contract every backend satisfies: dense, BM25, hybrid, in-memory and the HTTP client."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class Hit:
    """One retrieved document.

    Attributes:
        id: the document's id in its corpus.
        title: document title ("" when the corpus has none).
        text: document body without the title.
        score: retrieval score; higher is better. Comparable only within one retriever.
        record: the document's Search-R1 corpus row as JSON text, where the index keeps it (a row whose
            `contents` is not `"Title"\\ntext` or that has more fields); None when `{"id", "contents"}`
            rebuilt from id, title and text is the row.
    """

    id: str
    title: str
    text: str
    score: float
    record: str | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """id, title, text and score."""
        return {name: value for name, value in asdict(self).items() if name != "record"}

    def document(self) -> dict[str, Any]:
        """The document as Search-R1's server answers it: the stored corpus row, else `{"id", "contents"}`."""
        if self.record is not None:
            return dict(json.loads(self.record))
        return {"id": self.id, "contents": self.contents}

    @property
    def contents(self) -> str:
        """The Search-R1 `contents` form: the stored row's own, else `"Title"\\ntext`."""
        if self.record is not None:
            contents = json.loads(self.record).get("contents")
            if isinstance(contents, str):
                return contents
        return f'"{self.title}"\n{self.text}'


@runtime_checkable
class Retriever(Protocol):
    """Anything that answers a batch of queries with the k best documents each.

    `search(["q1", "q2"], k=3)` returns `[[Hit, Hit, Hit], [Hit, Hit, Hit]]`, best first. Fewer than k
    hits are returned when the corpus is smaller than k. Implementations may raise; environments catch and
    report it.
    """

    def search(self, queries: list[str], k: int) -> list[list[Hit]]: ...


def check_query_text(queries: Sequence[str]) -> None:
    """Raise `ValueError` naming the first query that is not valid Unicode text: a lone surrogate such as
    "\\ud800", which Python strings and JSON allow but no tokenizer accepts."""
    for i, query in enumerate(queries):
        try:
            query.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"queries[{i}] is not valid Unicode text: {exc.reason} at character {exc.start}"
            ) from None
