"""Caption / sequence decoders with incremental (cached) decoding.

Two decoders share one call signature,

    decoder(tokens (B, T) int, context (B, S, Dc), context_mask (B, S) bool | None,
            token_mask (B, T) bool | None = None, pooled (B, Dp) | None = None,
            *, train=False) -> logits (B, T, V) float32

* :class:`TransformerDecoder`: token + learned position embeddings, pre-LN
  :class:`mmjax.layers.TransformerBlock` s (causal self-attention with key
  padding mask, cross-attention to the context with the context's token mask,
  MLP); final LayerNorm; output projection tied to the token embedding or separate.
* :class:`LSTMDecoder` (:mod:`mmjax.layers.lstm_decoder`): an LSTM initialised
  from the pooled context, optionally with additive attention at every step.

Cached decoding. With ``decode=True`` a decoder processes T >= 1 new tokens
at a time and keeps its state in the flax ``"cache"`` collection
(``apply(..., mutable=["cache"])``): per self-attention layer the projected keys
and values of all previous positions (``cached_key``/``cached_value``,
(B, L_max, N, H), kept by :class:`mmjax.layers.MultiHeadAttention`) and a write
index, plus the decoder's position counter; for the LSTM the carry and a step
counter. The cache is created by calling ``init`` (or ``jax.eval_shape`` of it)
in decode mode on a dummy (B, L_max) token array: that sets L_max.
Cross-attention keys/values are recomputed from the context at each step
(caching them would save S*Dc*D multiply-adds per layer and step).
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.layers.decoder_inputs import DecoderInputError, check_context, check_tokens
from mmjax.layers.dense import dense
from mmjax.layers.lstm_decoder import AttentionLSTMCell, LSTMDecoder
from mmjax.layers.transformer import TransformerBlock, layer_norm
from mmjax.sharding import EMBED, LENGTH, VOCAB, logical

Array = jax.Array


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
        check_tokens(tokens, "transformer decoder")
        check_context(context, context_mask, tokens.shape[0], "transformer decoder")
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
            x = TransformerBlock(
                self.num_heads, self.mlp_dim, self.dropout_rate, causal=True, cross_attention=True,
                decode=self.decode, dtype=self.dtype, param_dtype=self.param_dtype, name=f"layer_{i}",
            )(x, token_mask, context, context_mask, train)
        x = layer_norm(self.dtype, self.param_dtype, "ln_final")(x)
        if self.tie_embeddings:
            logits = embed.attend(x)
        else:
            logits = dense(
                self.vocab_size, axes=(EMBED, VOCAB), dtype=self.dtype, param_dtype=self.param_dtype, name="logits"
            )(x)
        return logits.astype(jnp.float32)


__all__ = [
    "AttentionLSTMCell",
    "DecoderInputError",
    "LSTMDecoder",
    "TransformerDecoder",
]
