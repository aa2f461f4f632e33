"""Attention maps of a model's attention fusion blocks.

The blocks of ``mmjax.fusion.attention`` sow their softmax weights under the
``intermediates`` collection when it is mutable
(:mod:`mmjax.fusion.recorded_attention`); this runs the model once that way.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping

import numpy as np

from mmjax.fusion.recorded_attention import COLLECTION, NAME


def collect_weights(intermediates: Mapping[str, Any], prefix: str = "") -> Dict[str, np.ndarray]:
    """Nested ``intermediates`` -> {"fusion/a_from_b_0/cross_attn": (B, heads, Tq, Tk)}.

    A module called more than once (shared weights) gives one entry per call,
    named ``path#0``, ``path#1``, ... in call order.
    """
    out: Dict[str, np.ndarray] = {}
    for key, value in intermediates.items():
        path = f"{prefix}/{key}" if prefix else str(key)
        if key == NAME:
            calls = list(value)
            for i, w in enumerate(calls):
                out[prefix if len(calls) == 1 else f"{prefix}#{i}"] = np.asarray(w)
        elif isinstance(value, Mapping):
            out.update(collect_weights(value, path))
    return out


def attention_maps(model, variables: Mapping[str, Any], batch: Mapping[str, Any], **apply_kwargs) -> Dict[str, np.ndarray]:
    """Runs ``model.apply(variables, batch, train=False, mutable=["intermediates"])`` and
    returns every recorded attention: {module path: (B, heads, Tq, Tk) float32}, rows summing
    to 1 over the keys they may attend to (0 on masked keys). Empty when the model has no
    attention fusion block. The forward result is the same as without recording."""
    apply_kwargs.setdefault("train", False)
    _, state = model.apply(dict(variables), batch, mutable=[COLLECTION], **apply_kwargs)
    return collect_weights(state.get(COLLECTION, {}))


__all__ = ["attention_maps", "collect_weights"]
