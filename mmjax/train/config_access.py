"""Reading a config that may be an ml_collections ConfigDict, a dict or None."""
from __future__ import annotations

import copy
from typing import Any, Dict

from mmjax.train import defaults as _defaults


def get(cfg: Any, key: str, default: Any = None) -> Any:
    """``cfg[key]``, or ``default`` when ``cfg`` is None, lacks the key or holds None there."""
    if cfg is None:
        return default
    try:
        value = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
    except (AttributeError, KeyError):
        return default
    return default if value is None else value


def setting(cfg: Any, key: str) -> Any:
    """The run-config value at dotted ``key`` (``"train.nan_policy"``), else its default from
    :mod:`mmjax.train.defaults` (also when a section is missing or holds None)."""
    node = cfg
    for part in key.split("."):
        node = get(node, part)
    return _defaults.default(key) if node is None else node


def copy_with(cfg: Any, **updates: Any) -> Any:
    """A copy of ``cfg`` (a ConfigDict, locked or not, or a mapping) with the top-level ``updates`` set."""
    if not hasattr(cfg, "copy_and_resolve_references"):
        return {**copy.deepcopy(dict(cfg)), **updates}
    out = cfg.copy_and_resolve_references()
    with out.unlocked():
        for key, value in updates.items():
            out[key] = value
    return out


def as_dict(x: Any) -> Dict[str, Any]:
    """A plain dict copy of a ConfigDict / mapping ({} for None)."""
    if x is None:
        return {}
    return x.to_dict() if hasattr(x, "to_dict") else dict(x)
