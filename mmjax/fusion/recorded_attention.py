"""Attention layers of the fusion blocks that can record their attention weights.

:class:`RecordedAttention` and :class:`RecordedTransformerBlock` have the
parameters, names and forward result of :class:`mmjax.layers.MultiHeadAttention`
and :class:`mmjax.layers.TransformerBlock` (same submodules, same
``dot_product_attention`` call). When the ``"intermediates"`` collection is
mutable (``model.apply(..., mutable=["intermediates"])``) the attention also
computes its softmax weights explicitly and sows them as
``intermediates/.../attention_weights``, (B, heads, Tq, Tk) float32; otherwise
nothing extra is computed. ``mmjax.explain.attention_maps`` reads them.
"""
from __future__ import annotations

import functools
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.layers import MlpBlock, MultiHeadAttention, TransformerBlock
from mmjax.layers.transformer import HeadMerge, HeadProjection, attention_mask, dot_product_attention, layer_norm

Array = jax.Array

COLLECTION = "intermediates"
NAME = "attention_weights"


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


class RecordedAttention(MultiHeadAttention):
    """:class:`MultiHeadAttention` that sows its weights (B, N, T, S) when "intermediates" is mutable.

    ``keep`` (B,) bool, optional: examples whose attention output the caller
    discards (a query attending to a missing source); their recorded weights are zeros.
    """

    @nn.compact
    def __call__(self, inputs_q: Array, inputs_kv: Optional[Array] = None, mask: Optional[Array] = None,
                 causal: bool = False, train: bool = False, keep: Optional[Array] = None) -> Array:
        """inputs_q (B, T, Dq), inputs_kv (B, S, Dkv) or None, mask (B, T, S) bool -> (B, T, out_dim)."""
        if inputs_kv is None:
            inputs_kv = inputs_q
        qkv_dim = self.qkv_dim or inputs_q.shape[-1]
        if qkv_dim % self.num_heads:
            raise ValueError(f"attention width {qkv_dim} is not divisible by num_heads={self.num_heads}")
        proj = functools.partial(HeadProjection, num_heads=self.num_heads, head_dim=qkv_dim // self.num_heads,
                                 dtype=self.dtype, param_dtype=self.param_dtype)
        q = proj(name="query")(inputs_q)
        k = proj(name="key")(inputs_kv)
        v = proj(name="value")(inputs_kv)
        if mask is not None:
            mask = mask[:, None, :, :]  # (B, 1, T, S): same mask for every head
        if self.is_mutable_collection(COLLECTION):
            w = attention_weights(q, k, mask, causal)
            if keep is not None:
                w = jnp.where(keep[:, None, None, None], w, 0.0)
            self.sow(COLLECTION, NAME, w)
        out = dot_product_attention(q, k, v, mask=mask, is_causal=causal)
        out = HeadMerge(out_dim=self.out_dim or inputs_q.shape[-1], dtype=self.dtype,
                        param_dtype=self.param_dtype, name="out")(out)
        return nn.Dropout(self.dropout_rate)(out, deterministic=not train)


class RecordedTransformerBlock(TransformerBlock):
    """:class:`TransformerBlock` whose attentions are :class:`RecordedAttention` (same parameters)."""

    @nn.compact
    def __call__(self, x: Array, mask: Optional[Array] = None, context: Optional[Array] = None,
                 context_mask: Optional[Array] = None, train: bool = False) -> Array:
        """x (B, T, D), mask (B, T) bool key padding mask, context (B, S, Dc), context_mask (B, S) -> (B, T, D)."""
        attn = functools.partial(RecordedAttention, num_heads=self.num_heads, dropout_rate=self.dropout_rate,
                                 dtype=self.dtype, param_dtype=self.param_dtype)
        h = layer_norm(self.dtype, self.param_dtype, "ln_attn")(x)
        x = x + attn(name="self_attn")(h, mask=attention_mask(mask, mask), causal=self.causal, train=train)
        if self.cross_attention:
            if context is None:
                raise ValueError("TransformerBlock(cross_attention=True) needs a context")
            h = layer_norm(self.dtype, self.param_dtype, "ln_cross")(x)
            x = x + attn(name="cross_attn")(h, context, mask=attention_mask(mask, context_mask), train=train)
        h = layer_norm(self.dtype, self.param_dtype, "ln_mlp")(x)
        return x + MlpBlock(self.mlp_dim, self.dropout_rate, self.dtype, self.param_dtype, name="mlp")(
            h, train=train
        )


__all__ = ["RecordedAttention", "RecordedTransformerBlock", "attention_weights"]
