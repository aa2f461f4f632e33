"""Caption / sequence decoders with incremental (cached) decoding.

Two decoders share one call signature,

    decoder(tokens (B, T) int, context (B, S, Dc), context_mask (B, S) bool | None,
            token_mask (B, T) bool | None = None, pooled (B, Dp) | None = None,
            *, train=False) -> logits (B, T, V) float32

* :class:`TransformerDecoder`: token + learned position embeddings, pre-LN
  blocks of causal self-attention (with key padding mask), cross-attention to
  the context (with the context's token mask) and an MLP; final LayerNorm;
  output projection tied to the token embedding or separate.
* :class:`LSTMDecoder`: an LSTM whose initial (c, h) come from the pooled
  context (tanh of a linear map, as in Show, Attend and Tell). Without
  attention the context enters only through that initial state; with
  ``attention=True`` every step computes Bahdanau additive attention
  (score = v^T tanh(W_k ctx_s + W_q h_{t-1}), masked softmax over s) and feeds
  the context vector both into the cell (concatenated to the token embedding)
  and into the output layer.

Cached decoding. With ``decode=True`` a decoder processes T >= 1 new tokens
at a time and keeps its state in the flax ``"cache"`` collection
(``apply(..., mutable=["cache"])``): per self-attention layer the projected keys
and values of all previous positions (``cached_key``/``cached_value``,
(B, L_max, N, H)) and a write index, plus the decoder's position counter; for
the LSTM the carry and a step counter. The cache is created by calling
``init`` (or ``jax.eval_shape`` of it) in decode mode on a dummy (B, L_max)
token array: that sets L_max. Cross-attention keys/values are recomputed from
the context at each step (it reuses :class:`MultiHeadAttention` unchanged;
caching them would save S*Dc*D multiply-adds per layer and step).
"""
from __future__ import annotations

import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax import errors
from mmjax.layers.dense import dense
from mmjax.layers.masked import masked_mean
from mmjax.layers.transformer import (
    HeadMerge,
    HeadProjection,
    MlpBlock,
    MultiHeadAttention,
    attention_mask,
    dot_product_attention,
    layer_norm,
)
from mmjax.sharding import EMBED, HEADS, KV, LENGTH, MLP, VOCAB, logical

Array = jax.Array


class DecoderInputError(errors.InputError):
    """Bad decoder input: token dtype/rank, sequence longer than max_len, context shape."""


class CachedSelfAttention(nn.Module):
    """Causal multi-head self-attention with an optional KV cache.

    Same parameters as :class:`mmjax.layers.MultiHeadAttention` (query, key,
    value, out). x (B, T, D), mask (B, T) key padding mask -> (B, T, D).
    """

    num_heads: int
    dropout_rate: float = 0.0
    decode: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, mask: Optional[Array] = None, train: bool = False) -> Array:
        d = x.shape[-1]
        if d % self.num_heads:
            raise ValueError(f"attention width {d} is not divisible by num_heads={self.num_heads}")
        proj = functools.partial(
            HeadProjection,
            num_heads=self.num_heads,
            head_dim=d // self.num_heads,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        q, k, v = proj(name="query")(x), proj(name="key")(x), proj(name="value")(x)
        if self.decode:
            initialized = self.has_variable("cache", "cached_key")
            cached_k = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
            cached_v = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
            index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
            if initialized:
                i = index.value
                t = x.shape[1]
                k = jax.lax.dynamic_update_slice(cached_k.value, k.astype(cached_k.value.dtype), (0, i, 0, 0))
                v = jax.lax.dynamic_update_slice(cached_v.value, v.astype(cached_v.value.dtype), (0, i, 0, 0))
                cached_k.value, cached_v.value = k, v
                index.value = i + t
                # Query at absolute position i + t' sees cached keys 0 .. i + t'.
                allowed = jnp.arange(k.shape[1])[None, :] <= (i + jnp.arange(t))[:, None]
                out = dot_product_attention(q, k, v, mask=allowed[None, None])
            else:  # the shape-defining init call: plain causal attention
                out = dot_product_attention(q, k, v, is_causal=True)
        else:
            m = None if mask is None else mask[:, None, None, :]
            out = dot_product_attention(q, k, v, mask=m, is_causal=True)
        out = HeadMerge(out_dim=d, dtype=self.dtype, param_dtype=self.param_dtype, name="out")(out)
        return nn.Dropout(self.dropout_rate)(out, deterministic=not train)


class DecoderBlock(nn.Module):
    """Pre-LN: x + CausalSelfAttn(LN x) + CrossAttn(LN x, context) + MLP(LN x)."""

    num_heads: int
    mlp_dim: int
    dropout_rate: float = 0.0
    decode: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, context, context_mask=None, token_mask=None, train: bool = False):
        h = layer_norm(self.dtype, self.param_dtype, "ln_attn")(x)
        x = x + CachedSelfAttention(
            self.num_heads, self.dropout_rate, self.decode, self.dtype, self.param_dtype, name="self_attn"
        )(h, token_mask, train)
        h = layer_norm(self.dtype, self.param_dtype, "ln_cross")(x)
        x = x + MultiHeadAttention(
            num_heads=self.num_heads,
            dropout_rate=self.dropout_rate,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="cross_attn",
        )(h, context, mask=attention_mask(None, context_mask), train=train)
        h = layer_norm(self.dtype, self.param_dtype, "ln_mlp")(x)
        return x + MlpBlock(self.mlp_dim, self.dropout_rate, self.dtype, self.param_dtype, name="mlp")(h, train)


def _check_tokens(tokens: Array, where: str) -> None:
    if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise DecoderInputError(
            f"{where}: tokens must be (B, T) integer ids, got shape {tuple(tokens.shape)} dtype {tokens.dtype}"
        )


def _check_context(context: Array, context_mask: Optional[Array], batch: int, where: str) -> None:
    if context.ndim != 3 or context.shape[0] != batch:
        raise DecoderInputError(
            f"{where}: context must be (B={batch}, S, D), got shape {tuple(context.shape)}"
        )
    if context_mask is not None and tuple(context_mask.shape) != tuple(context.shape[:2]):
        raise DecoderInputError(
            f"{where}: context_mask must be {tuple(context.shape[:2])}, got {tuple(context_mask.shape)}"
        )


class TransformerDecoder(nn.Module):
    """Pre-LN transformer decoder (see the module docstring).

    Attributes:
      vocab_size: V. max_len: number of learned positions.
      width: D. num_layers, num_heads, mlp_dim: block sizes.
      tie_embeddings: logits = x E^T with E the token embedding (else a Dense).
      decode: cached incremental decoding (see the module docstring).
    """

    vocab_size: int
    max_len: int
    width: int = 256
    num_layers: int = 2
    num_heads: int = 4
    mlp_dim: int = 1024
    dropout_rate: float = 0.0
    tie_embeddings: bool = True
    decode: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self,
        tokens: Array,
        context: Array,
        context_mask: Optional[Array] = None,
        token_mask: Optional[Array] = None,
        pooled: Optional[Array] = None,
        *,
        train: bool = False,
    ) -> Array:
        """tokens (B, T) -> logits (B, T, V) float32; ``pooled`` is unused."""
        del pooled
        _check_tokens(tokens, "transformer decoder")
        _check_context(context, context_mask, tokens.shape[0], "transformer decoder")
        t = tokens.shape[1]
        if t > self.max_len:
            raise DecoderInputError(
                f"transformer decoder: {t} tokens exceed max_len={self.max_len} positions"
            )
        embed = nn.Embed(
            self.vocab_size,
            self.width,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            embedding_init=logical(nn.initializers.normal(0.02), (VOCAB, EMBED)),
            name="token_embed",
        )
        pos_table = self.param(
            "pos_embed", logical(nn.initializers.normal(0.02), (LENGTH, EMBED)), (self.max_len, self.width),
            self.param_dtype,
        )
        positions = jnp.arange(t)
        if self.decode:
            initialized = self.has_variable("cache", "position")
            pos = self.variable("cache", "position", lambda: jnp.array(0, jnp.int32))
            if initialized:
                positions = pos.value + positions
                pos.value = pos.value + t
            token_mask = None  # generated tokens are never padding
        x = embed(tokens) + jnp.take(pos_table, positions, axis=0).astype(self.dtype)[None]
        x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
        context = context.astype(self.dtype)
        for i in range(self.num_layers):
            x = DecoderBlock(
                self.num_heads, self.mlp_dim, self.dropout_rate, self.decode, self.dtype, self.param_dtype,
                name=f"layer_{i}",
            )(x, context, context_mask, token_mask, train)
        x = layer_norm(self.dtype, self.param_dtype, "ln_final")(x)
        if self.tie_embeddings:
            logits = embed.attend(x)
        else:
            logits = dense(
                self.vocab_size, axes=(EMBED, VOCAB), dtype=self.dtype, param_dtype=self.param_dtype, name="logits"
            )(x)
        return logits.astype(jnp.float32)


class AttentionLSTMCell(nn.Module):
    """One LSTM step, optionally with additive attention over the context.

    carry (c, h) each (B, H); x (B, E); context (B, S, Dc); context_mask (B, S);
    keys (B, S, A) = W_k context (precomputed once per sequence) ->
    (carry, out) with out (B, H) or (B, H + Dc) with attention.
    """

    hidden: int
    attention: bool = False
    attention_dim: int = 128
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, carry, x, context, context_mask, keys):
        if self.attention:
            c, h = carry
            q = dense(self.attention_dim, axes=(EMBED, MLP), use_bias=False, dtype=self.dtype,
                      param_dtype=self.param_dtype, name="attn_query")(h)
            e = dense(1, axes=(MLP, EMBED), use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
                      name="attn_score")(jnp.tanh(keys + q[:, None, :]))[..., 0]
            e = e.astype(jnp.float32)
            if context_mask is not None:
                e = jnp.where(context_mask, e, jnp.finfo(jnp.float32).min)
            w = jax.nn.softmax(e, axis=-1).astype(self.dtype)
            ctx = jnp.einsum("bs,bsd->bd", w, context)
            x = jnp.concatenate([x, ctx], axis=-1)
        carry, out = nn.OptimizedLSTMCell(
            self.hidden, dtype=self.dtype, param_dtype=self.param_dtype, name="lstm"
        )(carry, x)
        if self.attention:
            out = jnp.concatenate([out, ctx], axis=-1)
        return carry, out


class LSTMDecoder(nn.Module):
    """LSTM decoder (see the module docstring). ``token_mask`` is accepted for
    signature compatibility; right padding cannot affect earlier positions of a
    left-to-right recurrence, so it is not needed.

    Attributes:
      vocab_size: V. hidden: LSTM width H. embed_dim: token embedding width.
      attention: additive attention over the context at every step.
    """

    vocab_size: int
    hidden: int = 256
    embed_dim: int = 128
    attention: bool = False
    attention_dim: int = 128
    dropout_rate: float = 0.0
    decode: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self,
        tokens: Array,
        context: Array,
        context_mask: Optional[Array] = None,
        token_mask: Optional[Array] = None,
        pooled: Optional[Array] = None,
        *,
        train: bool = False,
    ) -> Array:
        """tokens (B, T) -> logits (B, T, V) float32."""
        del token_mask
        _check_tokens(tokens, "lstm decoder")
        _check_context(context, context_mask, tokens.shape[0], "lstm decoder")
        context = context.astype(self.dtype)
        if pooled is None:
            pooled = masked_mean(context, jnp.ones(context.shape[:2], bool) if context_mask is None else context_mask)
        init = functools.partial(dense, self.hidden, axes=(EMBED, MLP), dtype=self.dtype, param_dtype=self.param_dtype)
        carry0 = (jnp.tanh(init(name="init_c")(pooled)), jnp.tanh(init(name="init_h")(pooled)))
        keys = None
        if self.attention:
            keys = dense(self.attention_dim, axes=(EMBED, MLP), use_bias=False, dtype=self.dtype,
                         param_dtype=self.param_dtype, name="attn_key")(context)
        x = nn.Embed(
            self.vocab_size,
            self.embed_dim,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            embedding_init=logical(nn.initializers.normal(0.1), (VOCAB, EMBED)),
            name="token_embed",
        )(tokens)
        x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
        cell_kwargs = dict(
            hidden=self.hidden, attention=self.attention, attention_dim=self.attention_dim,
            dtype=self.dtype, param_dtype=self.param_dtype, name="cell",
        )
        scan = nn.scan(
            AttentionLSTMCell,
            variable_broadcast="params",
            split_rngs={"params": False},
            in_axes=(1, nn.broadcast, nn.broadcast, nn.broadcast),
            out_axes=1,
        )
        if self.decode:
            initialized = self.has_variable("cache", "c")
            c = self.variable("cache", "c", jnp.zeros, carry0[0].shape, carry0[0].dtype)
            h = self.variable("cache", "h", jnp.zeros, carry0[1].shape, carry0[1].dtype)
            step = self.variable("cache", "step", lambda: jnp.array(0, jnp.int32))
            if initialized:
                first = step.value == 0
                carry = (jnp.where(first, carry0[0], c.value), jnp.where(first, carry0[1], h.value))
                carry, out = scan(**cell_kwargs)(carry, x, context, context_mask, keys)
                c.value, h.value = carry
                step.value = step.value + tokens.shape[1]
            else:
                _, out = scan(**cell_kwargs)(carry0, x, context, context_mask, keys)
        else:
            _, out = scan(**cell_kwargs)(carry0, x, context, context_mask, keys)
        out = nn.Dropout(self.dropout_rate)(out, deterministic=not train)
        logits = dense(
            self.vocab_size, axes=(EMBED, VOCAB), dtype=self.dtype, param_dtype=self.param_dtype, name="logits"
        )(out)
        return logits.astype(jnp.float32)


__all__ = [
    "AttentionLSTMCell",
    "CachedSelfAttention",
    "DecoderBlock",
    "DecoderInputError",
    "LSTMDecoder",
    "TransformerDecoder",
]
