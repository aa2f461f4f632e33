"""Analytic cost model of the fusion blocks: parameters and FLOPs per example.

Each block file registers a function ``(dims, out_dim, **config) -> Cost`` under
its block name. FLOPs count one multiply-add as 2 FLOPs (XLA's convention), so
they compare directly with ``compiled.cost_analysis()["flops"]``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence, Union

from mmjax.registry import Registry

COSTS = Registry("fusion cost model")


@dataclasses.dataclass(frozen=True)
class Cost:
    """params: learned parameters; flops: forward FLOPs per example (2 per MAC)."""

    params: int
    flops: int


def register_cost(name: str) -> Callable:
    return COSTS.register(name)


def cost(
    name: str,
    dims: Union[Sequence[int], Mapping[str, int]],
    out_dim: int,
    **config: Any,
) -> Cost:
    """Parameters and forward FLOPs per example of fusion block ``name``.

    Args:
      name: a registered fusion block name.
      dims: per-modality feature dims, a list (in sorted-name order) or a
        mapping name -> dim.
      out_dim: the block's output dim.
      **config: the block's other config (rank, num_heads, token_lengths, ...).
    """
    if isinstance(dims, Mapping):
        dims = [dims[k] for k in sorted(dims)]
    return COSTS.get(name)(list(dims), out_dim, **config)
