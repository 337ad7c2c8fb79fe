"""An HTTP client for a Search-R1-compatible retrieval server, implementing the `Retriever` interface.

Environments cannot tell it from a local index: `search(queries, k)` returns the same `Hit`s, with title and
text parsed back out of Search-R1's `contents` field and the server's document kept as the hit's `record`
where `{"id", "contents"}` rebuilt from them would differ from it. Connection errors, timeouts, 429 and 5xx
answers are retried with exponential backoff; other errors (401, 413, 422) raise at once with the server's
message.
"""

from __future__ import annotations

import time
from typing import Any

from retrievers.base import Hit
from retrievers.corpora import kept_record, split_contents

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})


class RetrievalServerError(RuntimeError):
    """The server refused a request or could not be reached after every retry."""


class HttpRetriever:
    """`Retriever` backed by `POST {url}/retrieve`.

    Args:
        url: server base URL (`http://127.0.0.1:8000`) or its `/retrieve` endpoint.
        token: bearer token, when the server was started with `--token`.
        timeout: seconds per attempt (connect and read).
        retries: extra attempts after the first for retryable failures.
        backoff: first delay in seconds; doubled after every failed attempt.
        max_batch: queries per request; larger batches are split.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_batch: int = 256,
    ) -> None:
        import httpx

        base = url.rstrip("/")
        self.base_url = base[: -len("/retrieve")] if base.endswith("/retrieve") else base
        self.retries = retries
        self.backoff = backoff
        self.max_batch = max_batch
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.Client(base_url=self.base_url, timeout=timeout, headers=headers)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> HttpRetriever:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def info(self) -> dict[str, Any]:
        return self._request("GET", "/info")

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/health")

    def search(self, queries: list[str], k: int) -> list[list[Hit]]:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        results: list[list[Hit]] = []
        for start in range(0, len(queries), self.max_batch):
            batch = queries[start : start + self.max_batch]
            body = {"queries": batch, "topk": k, "return_scores": True}
            answer = self._request("POST", "/retrieve", json=body)
            results.extend(parse_result(answer, len(batch)))
        return results

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        delay = self.backoff
        last: str = ""
        for attempt in range(self.retries + 1):
            try:
                response = self._client.request(method, path, **kwargs)
            except (httpx.TransportError, httpx.TimeoutException) as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code < 400:
                    return response.json()
                detail = _detail(response)
                if response.status_code not in RETRYABLE_STATUS:
                    raise RetrievalServerError(
                        f"{method} {self.base_url}{path} failed with {response.status_code}: {detail}"
                    )
                last = f"HTTP {response.status_code}: {detail}"
            if attempt < self.retries:
                time.sleep(delay)
                delay *= 2
        raise RetrievalServerError(
            f"{method} {self.base_url}{path} failed after {self.retries + 1} attempts; last error: {last}"
        )


def _detail(response: Any) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    return str(body.get("detail", body)) if isinstance(body, dict) else str(body)[:300]


def parse_result(answer: Any, num_queries: int) -> list[list[Hit]]:
    """Hits from a `/retrieve` answer, with or without scores (score 0.0 when absent)."""
    if not isinstance(answer, dict) or not isinstance(answer.get("result"), list):
        raise RetrievalServerError(f"unexpected answer from the server: {str(answer)[:200]}")
    result = answer["result"]
    if len(result) != num_queries:
        raise RetrievalServerError(f"server answered {len(result)} result lists for {num_queries} queries")
    out: list[list[Hit]] = []
    for entries in result:
        hits = []
        for entry in entries:
            doc = entry.get("document", entry)
            doc_id = str(doc.get("id", ""))
            title, text = split_contents(str(doc.get("contents", "")))
            record = kept_record(doc, doc_id, title, text)
            hits.append(Hit(doc_id, title, text, float(entry.get("score", 0.0)), record))
        out.append(hits)
    return out
