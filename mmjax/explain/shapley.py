"""Exact Shapley values of the modalities of one prediction, by masking.

A coalition S of modalities is evaluated by running the model on the example
with ``modality_mask[m] = (m in S)`` (a modality outside S is *absent*, as
the classifier handles missing modalities). The value v(S) is the
probability (or the logit) of a target class, by default the class predicted
with every modality present. The Shapley value of modality j is

    phi_j = sum_{S ⊆ M \\ {j}} |S|! (M - |S| - 1)! / M!  (v(S ∪ {j}) - v(S))

and the values add up to v(all) - v(none) (efficiency). All 2^M coalitions of
one example go through ``logits_fn`` in one batched call of 2^M rows, so the
cost is 2^M forward passes per example; M > 8 is refused.

A modality already missing in the example (its mask False) stays absent in
every coalition, so its value is 0.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

from mmjax import errors

MAX_MODALITIES = 8
VALUES = ("probability", "logit")

LogitsFn = Callable[[Mapping[str, Any]], Any]  # batch -> (B, C) logits


class ExplainError(errors.InputError):
    """An explanation that cannot be computed as asked (too many modalities, a bad input...)."""


def coalitions(num_modalities: int) -> np.ndarray:
    """(2^M, M) bool: row k holds modality j iff bit j of k is set (row 0 empty, row 2^M - 1 full)."""
    if not 1 <= num_modalities <= MAX_MODALITIES:
        raise ExplainError(f"exact Shapley values need 1 to {MAX_MODALITIES} modalities "
                           f"(2^M forward passes per example), got {num_modalities}")
    k = np.arange(2 ** num_modalities)[:, None]
    return ((k >> np.arange(num_modalities)[None, :]) & 1).astype(bool)


def shapley_from_values(v: np.ndarray, num_modalities: int) -> np.ndarray:
    """v (2^M,) coalition values in :func:`coalitions` order -> (M,) exact Shapley values."""
    v = np.asarray(v, np.float64)
    members = coalitions(num_modalities)
    sizes = members.sum(1)
    m = num_modalities
    weight = np.array([math.factorial(s) * math.factorial(m - s - 1) / math.factorial(m) if s < m else 0.0
                       for s in sizes])
    out = np.zeros(m)
    for j in range(m):
        without = ~members[:, j]  # coalitions S without j; S ∪ {j} is row k | 2^j
        rows = np.nonzero(without)[0]
        out[j] = np.sum(weight[rows] * (v[rows | (1 << j)] - v[rows]))
    return out


def coalition_batch(batch: Mapping[str, Any], index: int, modalities: Sequence[str]) -> Dict[str, Any]:
    """Example ``index`` of ``batch`` repeated 2^M times, row k with the modalities of coalition k present.

    Keeps ``inputs``, ``token_mask`` and ``modality_mask`` (every input gets
    one; ``modalities`` are ANDed with the example's own mask).
    """
    members = coalitions(len(modalities))
    n = members.shape[0]
    rep = lambda x: np.repeat(np.asarray(x)[index:index + 1], n, axis=0)  # noqa: E731
    inputs = {m: rep(x) for m, x in batch["inputs"].items()}
    unknown = sorted(set(modalities) - set(inputs))
    if unknown:
        raise ExplainError(f"modalities {unknown} are not in the batch's inputs {sorted(inputs)}")
    own = dict(batch.get("modality_mask") or {})
    mask = {m: (rep(own[m]).astype(bool) if m in own else np.ones(n, bool)) for m in inputs}
    for j, m in enumerate(modalities):
        mask[m] = mask[m] & members[:, j]
    out = {"inputs": inputs, "modality_mask": mask}
    if batch.get("token_mask"):
        out["token_mask"] = {m: rep(x) for m, x in batch["token_mask"].items()}
    return out


def _values(logits: np.ndarray, target: int, value: str) -> np.ndarray:
    """(K, C) logits -> (K,) value of class ``target``."""
    logits = np.asarray(logits, np.float64)
    if value == "logit":
        return logits[:, target]
    z = logits - logits.max(-1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    return p[:, target]


def shapley_values(logits_fn: LogitsFn, batch: Mapping[str, Any], modalities: Optional[Sequence[str]] = None,
                   target: Optional[Sequence[int]] = None, value: str = "probability") -> List[Dict[str, Any]]:
    """Exact modality Shapley values for every example of ``batch``.

    Args:
      logits_fn: batch dict -> (K, C) logits (e.g. ``lambda b: model.apply(variables, b)``);
        called once per example with K = 2^M rows.
      batch: model-ready batch (``inputs`` with a leading batch axis B, optional masks).
      modalities: the players, default sorted(batch["inputs"]).
      target: (B,) class per example, default the class predicted with every modality.
      value: "probability" (softmax of the target class) or "logit".

    Returns:
      B dicts ``{"target": c, "value": value, "values": {modality: phi}, "empty": v(none),
      "full": v(all)}`` with sum(values) == full - empty up to float rounding.
    """
    if value not in VALUES:
        raise ExplainError(f"value must be one of {VALUES}, got {value!r}")
    names = list(modalities) if modalities is not None else sorted(batch["inputs"])
    coalitions(len(names))  # refuses M outside 1..8 before any forward pass
    size = len(np.asarray(next(iter(batch["inputs"].values()))))
    out = []
    for i in range(size):
        logits = np.asarray(logits_fn(coalition_batch(batch, i, names)))
        c = int(np.argmax(logits[-1])) if target is None else int(target[i])
        v = _values(logits, c, value)
        phi = shapley_from_values(v, len(names))
        out.append({"target": c, "value": value, "values": {m: float(p) for m, p in zip(names, phi)},
                    "empty": float(v[0]), "full": float(v[-1])})
    return out


__all__ = ["ExplainError", "MAX_MODALITIES", "coalition_batch", "coalitions", "shapley_from_values",
           "shapley_values"]
