"""Name -> object registries for everything users choose by name (schemes, envs, encoders, loaders)."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A dict of named entries whose lookup errors name the closest valid entry.

    >>> SCHEMES = Registry("advantage scheme")
    >>> @SCHEMES.register("grpo")
    ... def grpo(...): ...
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, *aliases: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            for key in (name, *aliases):
                if key in self._entries and self._entries[key] is not obj:
                    raise ValueError(f"{self.kind} {key!r} is already registered")
                self._entries[key] = obj
            return obj

        return decorator

    def add(self, name: str, obj: T) -> None:
        self.register(name)(obj)

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(unknown_name_message(self.kind, name, self._entries)) from None

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._entries.items())


def closest(name: str, candidates: object) -> str | None:
    """The candidate spelled most like `name`, or None when nothing is close."""
    matches = difflib.get_close_matches(name, [str(c) for c in candidates], n=1, cutoff=0.5)  # type: ignore[attr-defined]
    return matches[0] if matches else None


def unknown_name_message(kind: str, name: str, candidates: object) -> str:
    names = sorted(str(c) for c in candidates)  # type: ignore[attr-defined]
    hint = closest(name, names)
    suggestion = f" Did you mean {hint!r}?" if hint else ""
    return f"unknown {kind} {name!r}.{suggestion} Valid names: {', '.join(names)}"
