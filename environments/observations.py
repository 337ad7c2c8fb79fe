"""Formatting retrieved documents as observations and cutting observations to a character or token budget."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

ELLIPSIS = " ..."
OBSERVATION_FORMATS = ("agentrl", "searchr1")


class TokenizerLike(Protocol):
    """Anything with Hugging Face style `encode` / `decode`."""

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...

    def decode(self, ids: list[int], skip_special_tokens: bool = ...) -> str: ...


def unwrap_document(hit: Any) -> Any:
    """The document of a Search-R1 `{"document": {...}, "score": ...}` hit; any other hit as it is."""
    if isinstance(hit, dict) and isinstance(hit.get("document"), dict):
        return hit["document"]
    return hit


def hit_fields(hit: Any) -> tuple[str, str]:
    """(title, text) of a hit: a `Hit`, a `{"title", "text"}` dict or a Search-R1 `{"contents"}` dict."""
    hit = unwrap_document(hit)
    if isinstance(hit, dict):
        if "contents" in hit and "text" not in hit:
            title, _, text = str(hit["contents"]).partition("\n")
            return title.strip('"'), text
        return str(hit.get("title", "")), str(hit.get("text", ""))
    return str(getattr(hit, "title", "")), str(getattr(hit, "text", hit))


def format_documents(hits: Sequence[Any]) -> str:
    """agentrl's document listing: `Doc 1 (Title: Paris) text` lines, titles without quotes."""
    lines = []
    for i, hit in enumerate(hits, start=1):
        title, text = hit_fields(hit)
        lines.append(f"Doc {i} (Title: {title}) {text}")
    return "\n".join(lines)


def hit_contents(hit: Any) -> str:
    """A hit in Search-R1's `contents` form, `"Title"\ntext`: a Search-R1 dict's own `contents` verbatim, and
    a `Hit`'s `contents` (its corpus row's own where the index keeps it)."""
    hit = unwrap_document(hit)
    if isinstance(hit, dict) and "contents" in hit:
        return str(hit["contents"])
    if isinstance(getattr(hit, "contents", None), str):
        return str(hit.contents)
    title, text = hit_fields(hit)
    return f'"{title}"\n{text}'


def format_documents_searchr1(hits: Sequence[Any]) -> str:
    """Search-R1's rendering of one search's hits, byte for byte: per hit `Doc {i}(Title: {head}) {rest}` and
    a newline, where `head` is the first line of its contents (the quoted title) and `rest` the other lines;
    the whole listing stripped of surrounding whitespace."""
    parts = []
    for i, hit in enumerate(hits, start=1):
        head, _, rest = hit_contents(hit).partition("\n")
        parts.append(f"Doc {i}(Title: {head}) {rest}\n")
    return "".join(parts).strip()


def format_hits(hits: Sequence[Any], observation_format: str = "agentrl") -> str:
    """The listing of a search's hits in `observation_format` (`agentrl` says "No results." for none)."""
    if observation_format == "searchr1":
        return format_documents_searchr1(hits)
    return format_documents(hits) if hits else "No results."


def information_block(listing: str, observation_format: str = "agentrl") -> str:
    """`<information>listing</information>`; Search-R1 also puts two newlines before and after it."""
    block = wrap("information", listing)
    return f"\n\n{block}\n\n" if observation_format == "searchr1" else block


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
