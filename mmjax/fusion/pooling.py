"""Pooled fusion by (weighted) summation of per-modality projections: ``sum``, ``weighted``."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.fusion.base import prepare
from mmjax.fusion.cost import Cost, register_cost
from mmjax.fusion.registry import register
from mmjax.layers import dense
from mmjax.sharding import NORM, logical


def masked_softmax(logits: jax.Array, present: jax.Array, axis: int = -1) -> jax.Array:
    """Softmax of ``logits`` over ``axis`` restricted to entries where ``present``.

    Absent entries get weight 0 and the present ones are renormalised among
    themselves; a slice with nothing present gets all zeros (not NaN, not uniform).
    ``jnp.where`` rather than adding ``-inf`` so the gradient stays finite.

    Args:
      logits: (..., M, ...) scores.
      present: bool, broadcastable to ``logits``.
    """
    present = jnp.broadcast_to(present, logits.shape)
    low = jnp.finfo(logits.dtype).min
    w = jax.nn.softmax(jnp.where(present, logits, low), axis=axis)
    return jnp.where(present, w, 0)


def modality_logits(module: nn.Module, num: int) -> jax.Array:
    """(M,) learned modality scores, zero-initialised (so uniform weights at init).

    Replicated like a norm scale: M is tiny and has nothing to shard. Returned
    in at least float32: the softmax over them is cheap and bf16 would blur it.
    """
    a = module.param(
        "modality_logits", logical(nn.initializers.zeros_init(), (NORM,)), (num,), module.param_dtype
    )
    return a.astype(jnp.promote_types(module.param_dtype, jnp.float32))


def _project_all(module: nn.Module, inputs, out_dim: int) -> jax.Array:
    """(B, M, out_dim): dense projection of each modality's pooled features."""
    return jnp.stack(
        [
            dense(out_dim, dtype=module.dtype, param_dtype=module.param_dtype, name=f"proj_{n}")(
                inputs.pooled[n].astype(module.dtype)
            )
            for n in inputs.names
        ],
        axis=1,
    )


@register("sum")
class SumFusion(nn.Module):
    """z = s * sum_m present_m * (W_m z_m + b_m): every modality projected to ``out_dim``, then summed.

    With ``mean=True`` (the default) s = 1 / (number of present modalities),
    a mean: the output keeps the projections' scale whatever M, and at
    initialisation the block is exactly ``weighted`` (whose softmax weights
    start at 1/M). The plain sum (``mean=False``, s = 1) is M times that
    scale; on av_digits (M = 2, same initialisation and data order as
    ``weighted``) it fell 8 points behind on one seed of three, its audio
    branch under-trained (projection std 1.7 against the image's 3.7; see
    experiments/SWEEP_av_digits.md, "film and sum: seed spread").

    Input: pooled (B, D_m) or tokens (B, T_m, D_m) (mean-pooled over real
    tokens) per modality, D_m may differ. Output: (B, out_dim).

    Missing modality: its whole term, bias included, is zero, so the sum runs
    over the present modalities only (with ``mean=False`` the output scale
    grows with their number). An example with no modality present gets zeros.

    Attributes:
      out_dim: the common projection width.
      mean: divide by the number of present modalities (no parameters, so the tree is the same).
    """

    out_dim: int
    mean: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features, modality_mask=None, *, train: bool = False) -> jax.Array:
        inputs = prepare(features, modality_mask, block="sum")
        v = _project_all(self, inputs, self.out_dim)
        present = inputs.present_matrix(bool)[..., None]
        z = jnp.where(present, v, 0).sum(axis=1)
        if self.mean:
            z = z / jnp.maximum(present.sum(axis=1), 1).astype(z.dtype)
        return z


@register("weighted")
class WeightedFusion(nn.Module):
    """z = sum_m w_m (W_m z_m + b_m), w = softmax(a) over modalities, a (M,) learned.

    Input: pooled (B, D_m) or tokens (B, T_m, D_m) per modality. Output: (B, out_dim).

    Missing modality: excluded; the softmax is renormalised over the present
    modalities of each example (weights exp(a_m) / sum_{present} exp(a_j)).
    An example with no modality present gets zeros.

    Attributes:
      out_dim: the common projection width.
    """

    out_dim: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features, modality_mask=None, *, train: bool = False) -> jax.Array:
        inputs = prepare(features, modality_mask, block="weighted")
        v = _project_all(self, inputs, self.out_dim)
        a = modality_logits(self, len(inputs.names))
        present = inputs.present_matrix(bool)
        w = masked_softmax(jnp.broadcast_to(a, present.shape), present, axis=1)
        return jnp.einsum("bm,bmo->bo", w.astype(self.dtype), v)


@register_cost("sum")
def _sum_cost(dims, out_dim, **config) -> Cost:
    """Projections only; the M-way sum (elementwise) is not counted."""
    return Cost(
        params=sum((d + 1) * out_dim for d in dims),
        flops=sum(2 * d * out_dim for d in dims),
    )


@register_cost("weighted")
def _weighted_cost(dims, out_dim, **config) -> Cost:
    """Projections plus the weighted sum (an M-long contraction per output unit)."""
    m = len(dims)
    return Cost(
        params=sum((d + 1) * out_dim for d in dims) + m,
        flops=sum(2 * d * out_dim for d in dims) + 2 * m * out_dim,
    )
