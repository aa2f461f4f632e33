"""Reading a config that may be an ml_collections ConfigDict, a dict or None."""
from __future__ import annotations

from typing import Any, Dict


def get(cfg: Any, key: str, default: Any = None) -> Any:
    """``cfg[key]``, or ``default`` when ``cfg`` is None, lacks the key or holds None there."""
    if cfg is None:
        return default
    try:
        value = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
    except (AttributeError, KeyError):
        return default
    return default if value is None else value


def as_dict(x: Any) -> Dict[str, Any]:
    """A plain dict copy of a ConfigDict / mapping ({} for None)."""
    if x is None:
        return {}
    return x.to_dict() if hasattr(x, "to_dict") else dict(x)
