"""Formatting retrieved documents as observations and cutting observations to a character or token budget."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

ELLIPSIS = " ..."


class TokenizerLike(Protocol):
    """Anything with Hugging Face style `encode` / `decode`."""

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...

    def decode(self, ids: list[int], skip_special_tokens: bool = ...) -> str: ...


def hit_fields(hit: Any) -> tuple[str, str]:
    """(title, text) of a hit: a `Hit`, a `{"title", "text"}` dict or a Search-R1 `{"contents"}` dict."""
    if isinstance(hit, dict):
        if "document" in hit and isinstance(hit["document"], dict):
            hit = hit["document"]
        if "contents" in hit and "text" not in hit:
            title, _, text = str(hit["contents"]).partition("\n")
            return title.strip('"'), text
        return str(hit.get("title", "")), str(hit.get("text", ""))
    return str(getattr(hit, "title", "")), str(getattr(hit, "text", hit))


def format_documents(hits: Sequence[Any]) -> str:
    """Search-R1's document listing: `Doc 1 (Title: ...) text` lines."""
    lines = []
    for i, hit in enumerate(hits, start=1):
        title, text = hit_fields(hit)
        lines.append(f"Doc {i} (Title: {title}) {text}")
    return "\n".join(lines)


def truncate(
    text: str,
    max_chars: int | None = None,
    max_tokens: int | None = None,
    tokenizer: TokenizerLike | None = None,
) -> tuple[str, bool]:
    """Cut `text` to at most `max_chars` characters and `max_tokens` tokens (the latter needs a tokenizer).

    A cut text ends with " ..." (counted in the character budget). Returns the text and whether it was cut.
    """
    cut = False
    if max_tokens is not None and tokenizer is not None:
        ids = tokenizer.encode(text, add_special_tokens=False)
        if len(ids) > max_tokens:
            text = tokenizer.decode(ids[:max_tokens], skip_special_tokens=True) + ELLIPSIS
            cut = True
    if max_chars is not None and len(text) > max_chars:
        text = text[: max(0, max_chars - len(ELLIPSIS))] + ELLIPSIS
        cut = True
    return text, cut


def wrap(tag: str, body: str) -> str:
    return f"<{tag}>{body}</{tag}>"
