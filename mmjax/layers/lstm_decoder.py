"""LSTM caption decoder (re-exported by :mod:`mmjax.layers.decoder`, whose call signature it shares).

:class:`LSTMDecoder`: an LSTM whose initial (c, h) come from the pooled
context (tanh of a linear map, as in Show, Attend and Tell). Without attention
the context enters only through that initial state; with ``attention=True``
every step computes Bahdanau additive attention
(score = v^T tanh(W_k ctx_s + W_q h_{t-1}), masked softmax over s) and feeds
the context vector both into the cell (concatenated to the token embedding)
and into the output layer.

Cached decoding (``decode=True``, ``apply(..., mutable=["cache"])``): the
``"cache"`` collection holds the carry (``c``, ``h``, each (B, H)) and a step
counter ``step``; it is created by an ``init`` in decode mode, as for the
transformer decoder.
"""
from __future__ import annotations

import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.layers.decoder_inputs import check_context, check_tokens
from mmjax.layers.dense import dense
from mmjax.layers.masked import masked_mean
from mmjax.sharding import EMBED, MLP, VOCAB, logical

Array = jax.Array


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
        check_tokens(tokens, "lstm decoder")
        check_context(context, context_mask, tokens.shape[0], "lstm decoder")
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


__all__ = ["AttentionLSTMCell", "LSTMDecoder"]
