"""A tiny name -> constructor registry, one per family (encoders, fusion).

A config names its parts with strings; a new block is one file plus a
``@REGISTRY.register("name")`` line.
"""
from __future__ import annotations

import difflib
from typing import Any, Callable, Dict, List


class UnknownNameError(KeyError, ValueError):
    """Raised when a registry has no entry of the given name."""

    def __str__(self) -> str:  # KeyError quotes its message; we want plain text.
        return str(self.args[0]) if self.args else ""


class Registry:
    """Maps names to constructors (usually flax.linen Module classes)."""

    def __init__(self, family: str):
        self.family = family
        self._entries: Dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def decorator(constructor):
            if name in self._entries:
                raise ValueError(f"{self.family} {name!r} is registered twice")
            self._entries[name] = constructor
            return constructor

        return decorator

    def get(self, name: str) -> Callable[..., Any]:
        if name not in self._entries:
            close = difflib.get_close_matches(name, self._entries, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise UnknownNameError(
                f"unknown {self.family} {name!r}.{hint} Known: {', '.join(sorted(self._entries))}"
            )
        return self._entries[name]

    def create(self, name: str, **config: Any) -> Any:
        constructor = self.get(name)
        try:
            return constructor(**config)
        except TypeError as e:
            raise TypeError(f"{self.family} {name!r}: bad config {sorted(config)}: {e}") from None

    def names(self) -> List[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries
