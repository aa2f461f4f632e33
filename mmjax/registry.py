"""A tiny name -> constructor registry, one per family (encoders, fusion).

A config names its parts with strings; a new block is one file plus a
``@REGISTRY.register("name")`` line.
"""
from __future__ import annotations

import difflib
import numbers
from typing import Any, Callable, Dict, List, Mapping

from mmjax import errors


class UnknownNameError(errors.ConfigError, KeyError):
    """Raised when a registry has no entry of the given name."""

    def __str__(self) -> str:  # KeyError quotes its message; we want plain text.
        return str(self.args[0]) if self.args else ""


class BadSizeError(errors.ConfigError):
    """An integer size option (a width, a count) is out of range."""


def check_sizes(constructor: Any, config: Mapping[str, Any], where: str) -> None:
    """Raises :class:`BadSizeError` for an int option of ``constructor`` that is out of range.

    ``constructor`` is a dataclass (a flax Module); options annotated ``int``,
    ``Optional[int]`` or ``Sequence[int]`` must be >= 1 (widths, heads, ranks,
    sample rates, each entry of ``features``), or >= 0 when the name says it
    counts or indexes layers (``num_layers``, ``fusion_layer``); ``dropout_rate``
    must be in [0, 1). Caught here,
    a bad size names its config key; left to XLA it is a traceback about a
    negative shape deep inside a trace. ``where`` prefixes the key in the message
    ("model.fusion_config." gives "model.fusion_config.out_dim must be >= 1, got -1").
    """
    fields = getattr(constructor, "__dataclass_fields__", {})
    for key, value in config.items():
        if key == "dropout_rate" and isinstance(value, numbers.Real) and not 0 <= value < 1:
            raise BadSizeError(f"{where}{key} must be in [0, 1), got {value}")
        field = fields.get(key)
        kind = str(getattr(field, "type", ""))
        if field is None or "int" not in kind or "Tuple" in kind:
            continue
        low = 0 if "layer" in key else 1
        many = isinstance(value, (list, tuple))
        for i, v in enumerate(value if many else [value]):
            if isinstance(v, (str, float)) and not isinstance(v, bool):
                name = f"{where}{key}" + (f"[{i}]" if many else "")
                raise BadSizeError(f"{name} must be an integer, got {v!r}")
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                continue  # None for Optional; other types are the constructor's to reject
            if v < low:
                name = f"{where}{key}" + (f"[{i}]" if many else "")
                raise BadSizeError(f"{name} must be >= {low}, got {v}")


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
        check_sizes(constructor, config, f"{self.family} {name!r}: ")
        try:
            return constructor(**config)
        except TypeError as e:
            raise TypeError(f"{self.family} {name!r}: bad config {sorted(config)}: {e}") from None

    def names(self) -> List[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries
