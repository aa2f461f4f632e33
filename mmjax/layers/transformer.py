"""Transformer layers: multi-head attention (with an optional KV cache), MLP,
pre-LN block and a stack.

Shared by the ViT / text / audio / video encoders, the attention fusion blocks
and the caption decoder. Attention goes through
:func:`mmjax.layers.attention_ops.dot_product_attention` (cuDNN flash attention
where it applies, XLA elsewhere).

Cached decoding. ``MultiHeadAttention(decode=True)`` is causal self-attention
that processes T >= 1 new positions per call and keeps the projected keys and
values of all earlier ones in the flax ``"cache"`` collection
(``apply(..., mutable=["cache"])``): ``cached_key`` / ``cached_value``
(B, L_max, N, H) and the write position ``cache_index``. The cache is created
by an ``init`` (or ``jax.eval_shape`` of it) in decode mode on a (B, L_max)
dummy: that call sets L_max and runs plain causal attention.

Recorded weights. ``record_weights=True`` (on the attention or the block) sows
each attention's softmax weights (B, N, T, S) float32 as
``intermediates/.../attention_weights`` when that collection is mutable
(``apply(..., mutable=["intermediates"])``); otherwise nothing extra is computed.
Parameters and the forward result are the same either way.
"""
from __future__ import annotations

import functools
from typing import Any, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.layers.attention_ops import (  # re-exported (see __all__): their historical import path
    ATTENTION_IMPLEMENTATIONS,
    WEIGHTS_COLLECTION,
    WEIGHTS_NAME,
    HeadMerge,
    HeadProjection,
    attention_weights,
    cudnn_attention_applies,
    dot_product_attention,
)
from mmjax.sharding import EMBED, LAYERS, MLP, NORM, logical

Array = jax.Array


def layer_norm(dtype: Any, param_dtype: Any, name: Optional[str] = None) -> nn.LayerNorm:
    return nn.LayerNorm(
        dtype=dtype,
        param_dtype=param_dtype,
        scale_init=logical(nn.initializers.ones_init(), (NORM,)),
        bias_init=logical(nn.initializers.zeros_init(), (NORM,)),
        name=name,
    )


def attention_mask(q_mask: Optional[Array], kv_mask: Optional[Array]) -> Optional[Array]:
    """(B, T) query mask and (B, S) key mask -> (B, T, S) bool, or None.

    Only keys are masked; a padded query still gets an output (ignored later),
    so no row of the softmax is ever empty unless every key is padding.
    """
    del q_mask
    if kv_mask is None:
        return None
    return kv_mask[:, None, :]


class MultiHeadAttention(nn.Module):
    """Multi-head (self or cross) attention, optionally with a KV cache.

    Attributes:
      num_heads: number of heads N.
      qkv_dim: total width of q/k/v (N * head_dim); defaults to the query width.
      out_dim: output width; defaults to the query width.
      decode: cached incremental causal self-attention (see the module docstring).
      record_weights: sow the softmax weights when "intermediates" is mutable (module docstring).
    """

    num_heads: int
    qkv_dim: Optional[int] = None
    out_dim: Optional[int] = None
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    decode: bool = False
    record_weights: bool = False

    @nn.compact
    def __call__(self, inputs_q: Array, inputs_kv: Optional[Array] = None, mask: Optional[Array] = None,
                 causal: bool = False, train: bool = False, keep: Optional[Array] = None) -> Array:
        """inputs_q (B, T, Dq), inputs_kv (B, S, Dkv) or None for self-attention,
        mask (B, T, S) bool (True = may attend) -> (B, T, out_dim). ``keep`` (B,) bool, optional:
        the examples whose output the caller keeps; the others' recorded weights are zeros."""
        if self.decode and (inputs_kv is not None or mask is not None or not causal):
            raise ValueError("MultiHeadAttention(decode=True) is causal self-attention without a mask "
                             "(the cache holds every earlier position, none of them padding)")
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
        if self.decode:
            k, v, mask, causal = self._extend_cache(k, v)
        if self.record_weights and self.is_mutable_collection(WEIGHTS_COLLECTION):
            w = attention_weights(q, k, mask, causal)
            self.sow(WEIGHTS_COLLECTION, WEIGHTS_NAME, w if keep is None else jnp.where(keep[:, None, None, None], w, 0))
        out = dot_product_attention(q, k, v, mask=mask, is_causal=causal)
        out = HeadMerge(out_dim=self.out_dim or inputs_q.shape[-1], dtype=self.dtype,
                        param_dtype=self.param_dtype, name="out")(out)
        return nn.Dropout(self.dropout_rate)(out, deterministic=not train)

    def _extend_cache(self, k: Array, v: Array) -> Tuple[Array, Array, Optional[Array], bool]:
        """Writes this call's k, v (B, T, N, H) into the cache at ``cache_index``.

        Returns the keys and values to attend to, the mask and the causal flag:
        on the shape-defining init call this call's own (causal); afterwards the
        whole cache (B, L_max, N, H) with mask (1, 1, T, L_max), where the query at
        absolute position i + t sees cached positions 0 .. i + t.
        """
        initialized = self.has_variable("cache", "cached_key")
        cached_k = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
        cached_v = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
        index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
        if not initialized:
            return k, v, None, True
        i, t = index.value, k.shape[1]
        k = jax.lax.dynamic_update_slice(cached_k.value, k.astype(cached_k.value.dtype), (0, i, 0, 0))
        v = jax.lax.dynamic_update_slice(cached_v.value, v.astype(cached_v.value.dtype), (0, i, 0, 0))
        cached_k.value, cached_v.value = k, v
        index.value = i + t
        allowed = jnp.arange(k.shape[1])[None, :] <= (i + jnp.arange(t))[:, None]
        return k, v, allowed[None, None], False


class MlpBlock(nn.Module):
    """Dense(mlp_dim) -> GELU -> Dropout -> Dense(D): (B, T, D) -> (B, T, D)."""

    mlp_dim: int
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        d = x.shape[-1]
        h = nn.Dense(
            self.mlp_dim,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=logical(nn.initializers.xavier_uniform(), (EMBED, MLP)),
            bias_init=logical(nn.initializers.zeros_init(), (MLP,)),
            name="fc1",
        )(x)
        h = nn.gelu(h)
        h = nn.Dropout(self.dropout_rate)(h, deterministic=not train)
        h = nn.Dense(
            d,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=logical(nn.initializers.xavier_uniform(), (MLP, EMBED)),
            bias_init=logical(nn.initializers.zeros_init(), (EMBED,)),
            name="fc2",
        )(h)
        return nn.Dropout(self.dropout_rate)(h, deterministic=not train)


class TransformerBlock(nn.Module):
    """Pre-LN block: x + SelfAttn(LN x) [+ CrossAttn(LN x, context)] + MLP(LN x).

    Shapes: x (B, T, D), mask (B, T) bool key padding mask, context (B, S, Dc),
    context_mask (B, S) bool. Returns (B, T, D). ``decode=True`` (needs
    ``causal``) caches the self-attention's keys and values (see the module
    docstring); cross-attention keys and values are recomputed from the context
    at each call. In decode mode ``mask`` must be None. ``record_weights``: both
    attentions record their weights (see the module docstring).
    """

    num_heads: int
    mlp_dim: int
    dropout_rate: float = 0.0
    causal: bool = False
    cross_attention: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    decode: bool = False
    record_weights: bool = False

    @nn.compact
    def __call__(self, x: Array, mask: Optional[Array] = None, context: Optional[Array] = None,
                 context_mask: Optional[Array] = None, train: bool = False) -> Array:
        attn = functools.partial(MultiHeadAttention, num_heads=self.num_heads, dropout_rate=self.dropout_rate,
                                 dtype=self.dtype, param_dtype=self.param_dtype, record_weights=self.record_weights)
        h = layer_norm(self.dtype, self.param_dtype, "ln_attn")(x)
        x = x + attn(name="self_attn", decode=self.decode)(
            h, mask=attention_mask(mask, mask), causal=self.causal, train=train
        )
        if self.cross_attention:
            if context is None:
                raise ValueError("TransformerBlock(cross_attention=True) needs a context")
            h = layer_norm(self.dtype, self.param_dtype, "ln_cross")(x)
            x = x + attn(name="cross_attn")(h, context, mask=attention_mask(mask, context_mask), train=train)
        h = layer_norm(self.dtype, self.param_dtype, "ln_mlp")(x)
        return x + MlpBlock(self.mlp_dim, self.dropout_rate, self.dtype, self.param_dtype, name="mlp")(h, train=train)


class _ScanBlock(TransformerBlock):
    """TransformerBlock with the (carry, output) signature nn.scan expects."""

    @nn.compact
    def __call__(self, x, mask, context, context_mask, train):  # type: ignore[override]
        return super().__call__(x, mask, context, context_mask, train), None


class TransformerStack(nn.Module):
    """``num_layers`` TransformerBlocks and a final LayerNorm.

    ``scan=True`` stacks the layers' weights on a leading "layers" axis and runs
    them with ``nn.scan`` (compile time independent of depth); ``remat=True``
    recomputes activations in the backward pass to save memory.
    """

    num_layers: int
    num_heads: int
    mlp_dim: int
    dropout_rate: float = 0.0
    causal: bool = False
    cross_attention: bool = False
    scan: bool = False
    remat: bool = False
    final_norm: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self,
        x: Array,
        mask: Optional[Array] = None,
        context: Optional[Array] = None,
        context_mask: Optional[Array] = None,
        train: bool = False,
    ) -> Array:
        """x (B, T, D), mask (B, T) -> (B, T, D)."""
        kwargs = dict(
            num_heads=self.num_heads,
            mlp_dim=self.mlp_dim,
            dropout_rate=self.dropout_rate,
            causal=self.causal,
            cross_attention=self.cross_attention,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        if self.scan:
            block = _ScanBlock
            if self.remat:
                block = nn.remat(block, static_argnums=(5,), prevent_cse=False)
            stack = nn.scan(
                block,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
                length=self.num_layers,
                metadata_params={nn.PARTITION_NAME: LAYERS},
            )(**kwargs, name="layers")
            x, _ = stack(x, mask, context, context_mask, train)
        else:
            block = nn.remat(TransformerBlock, static_argnums=(5,)) if self.remat else TransformerBlock
            for i in range(self.num_layers):
                x = block(**kwargs, name=f"layer_{i}")(x, mask, context, context_mask, train)
        if self.final_norm:
            x = layer_norm(self.dtype, self.param_dtype, "ln_final")(x)
        return x


__all__ = [
    "ATTENTION_IMPLEMENTATIONS",
    "WEIGHTS_COLLECTION",
    "WEIGHTS_NAME",
    "HeadMerge",
    "HeadProjection",
    "MlpBlock",
    "MultiHeadAttention",
    "TransformerBlock",
    "TransformerStack",
    "attention_mask",
    "attention_weights",
    "cudnn_attention_applies",
    "dot_product_attention",
    "layer_norm",
]
