"""Attention primitives: scaled dot-product attention and the per-head projections.

:func:`dot_product_attention` picks cuDNN's fused flash-attention kernel on a
GPU for bf16/fp16 inputs of a shape it supports (``jax.nn.dot_product_attention``
alone always takes the XLA path unless told otherwise) and XLA's everywhere
else. :class:`HeadProjection` and :class:`HeadMerge` are the (D -> N, H) and
(N, H -> D) maps around it. :class:`mmjax.layers.MultiHeadAttention` composes them.
:func:`attention_weights` is the softmax that attention applies, computed explicitly
for the layers that record it (``MultiHeadAttention(record_weights=True)``).
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.sharding import EMBED, HEADS, KV, logical

Array = jax.Array


ATTENTION_IMPLEMENTATIONS = ("auto", "xla", "cudnn")
# Where recorded attention weights are sown: intermediates/.../attention_weights.
WEIGHTS_COLLECTION = "intermediates"
WEIGHTS_NAME = "attention_weights"


def cudnn_attention_applies(backend: str, dtype: Any, head_dim: int, q_len: int, kv_len: int,
                            has_mask: bool) -> bool:
    """Whether cuDNN flash attention can run these shapes (its documented limits).

    GPU only, bf16/fp16 inputs, head dim a multiple of 8 and at most 128; with
    a mask (cuDNN takes it as a bias), even query and key lengths.
    """
    return (
        backend in ("gpu", "cuda")
        and jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
        and head_dim % 8 == 0
        and head_dim <= 128
        and (not has_mask or (q_len % 2 == 0 and kv_len % 2 == 0))
    )


def dot_product_attention(q: Array, k: Array, v: Array, *, mask: Optional[Array] = None,
                          is_causal: bool = False, implementation: str = "auto") -> Array:
    """Scaled dot-product attention: q (B, T, N, H), k and v (B, S, N, H), mask
    broadcastable to (B, N, T, S) bool (True = may attend) -> (B, T, N, H).

    implementation: "auto" (cuDNN where :func:`cudnn_attention_applies`, XLA
    otherwise), "xla", or "cudnn" (raises where cuDNN cannot run).
    """
    if implementation not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"attention implementation must be one of {ATTENTION_IMPLEMENTATIONS}, "
                         f"got {implementation!r}")
    if implementation == "auto":
        if cudnn_attention_applies(jax.default_backend(), q.dtype, q.shape[-1], q.shape[1], k.shape[1],
                                   mask is not None):
            try:
                return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=is_causal,
                                                    implementation="cudnn")
            except (NotImplementedError, RuntimeError):
                pass  # a cuDNN limit not listed above (version, compute capability): XLA instead
        implementation = "xla"
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=is_causal, implementation=implementation)


def attention_weights(q: Array, k: Array, mask: Optional[Array], causal: bool = False) -> Array:
    """q (B, T, N, H), k (B, S, N, H), mask broadcastable to (B, N, T, S) bool -> (B, N, T, S) float32.

    softmax(q k^T / sqrt(H)) over keys with masked keys at weight 0: the weights
    ``jax.nn.dot_product_attention`` applies. A row with every key masked is all zeros.
    """
    logits = jnp.einsum("btnh,bsnh->bnts", q.astype(jnp.float32), k.astype(jnp.float32))
    logits = logits / jnp.sqrt(jnp.float32(q.shape[-1]))
    allowed = jnp.ones(logits.shape, bool)
    if mask is not None:
        allowed = allowed & jnp.broadcast_to(mask, logits.shape)
    if causal:
        t, s = logits.shape[-2:]
        allowed = allowed & jnp.tril(jnp.ones((t, s), bool))
    logits = jnp.where(allowed, logits, jnp.finfo(jnp.float32).min)
    peak = logits.max(axis=-1, keepdims=True)
    e = jnp.where(allowed, jnp.exp(logits - peak), 0.0)
    return e / jnp.maximum(e.sum(-1, keepdims=True), jnp.finfo(jnp.float32).tiny)


class HeadProjection(nn.Module):
    """(B, T, D) -> (B, T, N, H) with kernel (D, N, H) and bias (N, H).

    Written with explicit full-rank weights (not ``nn.DenseGeneral``, which
    initialises a flattened 2-D kernel) so the three logical axis names match
    the array's rank when the weights are created already sharded.
    """

    num_heads: int
    head_dim: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        shape = (x.shape[-1], self.num_heads, self.head_dim)
        kernel = self.param("kernel", logical(_fan_in_out_xavier(shape[0], self.num_heads * self.head_dim),
                                              (EMBED, HEADS, KV)), shape, self.param_dtype)
        bias = self.param("bias", logical(nn.initializers.zeros_init(), (HEADS, KV)),
                          shape[1:], self.param_dtype)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        return jnp.einsum("btd,dnh->btnh", x, kernel) + bias


class HeadMerge(nn.Module):
    """(B, T, N, H) -> (B, T, out_dim) with kernel (N, H, out_dim) and bias (out_dim,)."""

    out_dim: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        shape = x.shape[-2:] + (self.out_dim,)
        kernel = self.param("kernel", logical(_fan_in_out_xavier(shape[0] * shape[1], self.out_dim),
                                              (HEADS, KV, EMBED)), shape, self.param_dtype)
        bias = self.param("bias", logical(nn.initializers.zeros_init(), (EMBED,)), (self.out_dim,),
                          self.param_dtype)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        return jnp.einsum("btnh,nhd->btd", x, kernel) + bias


def _fan_in_out_xavier(fan_in: int, fan_out: int):
    """Glorot-uniform for a kernel whose fan-in / fan-out span several axes."""
    limit = (6.0 / (fan_in + fan_out)) ** 0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -limit, limit)

    return init


__all__ = ["ATTENTION_IMPLEMENTATIONS", "WEIGHTS_COLLECTION", "WEIGHTS_NAME", "HeadMerge", "HeadProjection",
           "attention_weights", "cudnn_attention_applies",
           "dot_product_attention"]
