"""Text encoders: ``lstm``, ``gru`` (recurrent) and ``transformer``.

Inputs are (B, L) int32 token ids with 0 = padding (see :mod:`mmjax.tokenizer`).
If ``mask`` is None it is derived as ``ids != 0``. Padding must be on the
right (every tokenizer here right-pads): the RNNs turn the mask into per-row
lengths. Output tokens are (B, L, D) with the input's mask; padded positions
hold zeros and never influence real positions or the pooled vector.
"""
from __future__ import annotations

import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.encoders.common import (
    EncoderInputError,
    check_mask,
    check_rank,
    cls_token,
    masked_mean,
    sliced_positions,
)
from mmjax.encoders.registry import register
from mmjax.layers import TransformerStack
from mmjax.sharding import EMBED, MLP, VOCAB, logical
from mmjax.types import Encoded

Array = jax.Array


def _text_inputs(name: str, ids: Array, mask: Optional[Array], vocab_size: int) -> Array:
    check_rank(name, ids, 2, "(B, L) int token id")
    if not jnp.issubdtype(ids.dtype, jnp.integer):
        raise EncoderInputError(f"{name} encoder: token ids must be integers, got dtype {ids.dtype}")
    if vocab_size < 2:
        raise EncoderInputError(f"{name} encoder: vocab_size must be >= 2, got {vocab_size}")
    mask = check_mask(name, mask, ids.shape, "(B, L) bool over tokens")
    return ids != 0 if mask is None else mask


def _embed(vocab_size: int, dim: int, dtype: Any, param_dtype: Any) -> nn.Embed:
    return nn.Embed(vocab_size, dim, dtype=dtype, param_dtype=param_dtype,
                    embedding_init=logical(nn.initializers.normal(0.02), (VOCAB, EMBED)), name="embed")


class _RecurrentEncoder(nn.Module):
    """Embedding -> ``num_layers`` (bi)directional RNN layers.

    Pooling (``pool``):
      * ``"final"``: the hidden state after the last real token of the forward
        direction, concatenated with the backward direction's state after it
        has read the sequence from its last real token back to the first;
      * ``"mean"``: the masked mean of the top layer's outputs.
    Variable lengths go through ``nn.RNN(seq_lengths=...)``, so padding never
    reaches a real position or the final state. Width D = ``hidden_dim`` (x2 if
    ``bidirectional``).
    """

    vocab_size: int
    embed_dim: int = 128
    hidden_dim: int = 128
    num_layers: int = 1
    bidirectional: bool = False
    pool: str = "final"
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    cell_name = ""

    def make_cell(self, name: str) -> nn.Module:
        raise NotImplementedError

    @nn.compact
    def __call__(self, ids: Array, mask: Optional[Array] = None, *, train: bool = False) -> Encoded:
        name = self.cell_name
        mask = _text_inputs(name, ids, mask, self.vocab_size)
        if self.pool not in ("final", "mean"):
            raise EncoderInputError(f"{name} encoder: pool must be 'final' or 'mean', got {self.pool!r}")
        lengths = mask.sum(-1).astype(jnp.int32)
        h = _embed(self.vocab_size, self.embed_dim, self.dtype, self.param_dtype)(ids)
        h = jnp.where(mask[..., None], h, 0)
        finals = []
        for layer in range(self.num_layers):
            if layer:
                h = nn.Dropout(self.dropout_rate)(h, deterministic=not train)
            fwd = nn.RNN(self.make_cell(f"fwd_cell_{layer}"), name=f"fwd_{layer}")
            carry_f, out = fwd(h, seq_lengths=lengths, return_carry=True)
            finals = [carry_f]
            if self.bidirectional:
                bwd = nn.RNN(self.make_cell(f"bwd_cell_{layer}"), name=f"bwd_{layer}")
                carry_b, out_b = bwd(h, seq_lengths=lengths, return_carry=True, reverse=True, keep_order=True)
                out = jnp.concatenate([out, out_b], axis=-1)
                finals.append(carry_b)
            h = jnp.where(mask[..., None], out, 0)
        if self.pool == "final":
            # LSTM carries are (c, h): the hidden state is the last element.
            states = [c[-1] if isinstance(c, tuple) else c for c in finals]
            pooled = jnp.concatenate(states, axis=-1).astype(self.dtype)
            # An all-padding row has no final state; give zeros rather than the
            # state nn.RNN happens to select for length 0.
            pooled = jnp.where((lengths > 0)[:, None], pooled, 0)
        else:
            pooled = masked_mean(h, mask)
        return Encoded(pooled=pooled, tokens=h, mask=mask)


def _cell_kwargs(self) -> dict:
    return dict(
        features=self.hidden_dim,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        kernel_init=logical(nn.initializers.lecun_normal(), (EMBED, MLP)),
        # The recurrent kernel is (hidden, hidden): a logical name may appear
        # only once per array, so only its output side is sharded.
        recurrent_kernel_init=logical(nn.initializers.orthogonal(), (None, MLP)),
        bias_init=logical(nn.initializers.zeros_init(), (MLP,)),
    )


@register("lstm")
class LstmEncoder(_RecurrentEncoder):
    __doc__ = "LSTM text encoder: (B, L) ids -> Encoded.\n\n" + (_RecurrentEncoder.__doc__ or "")
    cell_name = "lstm"

    def make_cell(self, name: str) -> nn.Module:
        return nn.OptimizedLSTMCell(**_cell_kwargs(self), name=name)


@register("gru")
class GruEncoder(_RecurrentEncoder):
    __doc__ = "GRU text encoder: (B, L) ids -> Encoded.\n\n" + (_RecurrentEncoder.__doc__ or "")
    cell_name = "gru"

    def make_cell(self, name: str) -> nn.Module:
        return nn.GRUCell(**_cell_kwargs(self), name=name)


@register("transformer")
class TransformerTextEncoder(nn.Module):
    """Token + learned position embeddings -> pre-LN TransformerStack: (B, L) ids -> Encoded(hidden_dim).

    Padding is a key mask in every attention layer. ``pool``:
      * ``"mean"``: masked mean of the token outputs;
      * ``"cls"``: a learned class token is prepended and its output pooled
        (not allowed with ``causal``, where it could see nothing);
      * ``"last"``: the output at the last real token (natural with ``causal``).
    ``tokens`` never include the class token.

    Attributes:
      max_len: size of the position table; longer inputs raise an error.
      causal: each token attends only to itself and earlier tokens.
      scan / remat: passed to TransformerStack.
    """

    vocab_size: int
    hidden_dim: int = 256
    num_layers: int = 4
    num_heads: int = 4
    mlp_dim: int = 1024
    max_len: int = 512
    dropout_rate: float = 0.0
    pool: str = "mean"
    causal: bool = False
    scan: bool = False
    remat: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, ids: Array, mask: Optional[Array] = None, *, train: bool = False) -> Encoded:
        mask = _text_inputs("transformer", ids, mask, self.vocab_size)
        if self.pool not in ("mean", "cls", "last"):
            raise EncoderInputError(f"transformer encoder: pool must be 'mean', 'cls' or 'last', got {self.pool!r}")
        if self.pool == "cls" and self.causal:
            raise EncoderInputError("transformer encoder: pool='cls' with causal=True sees no tokens; use pool='last'")
        b, length = ids.shape
        d = self.hidden_dim
        h = _embed(self.vocab_size, d, self.dtype, self.param_dtype)(ids)
        pos = sliced_positions(self, "pos_embedding", length, self.max_len, d, self.param_dtype,
                               "tokens", "transformer")
        h = h + pos.astype(self.dtype)
        attn_mask = mask
        if self.pool == "cls":
            cls = cls_token(self, d, self.param_dtype).astype(self.dtype)
            h = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, d)), h], axis=1)
            attn_mask = jnp.concatenate([jnp.ones((b, 1), bool), mask], axis=1)
        h = nn.Dropout(self.dropout_rate)(h, deterministic=not train)
        h = TransformerStack(
            num_layers=self.num_layers, num_heads=self.num_heads, mlp_dim=self.mlp_dim,
            dropout_rate=self.dropout_rate, causal=self.causal, scan=self.scan, remat=self.remat,
            dtype=self.dtype, param_dtype=self.param_dtype, name="transformer",
        )(h, attn_mask, train=train)
        if self.pool == "cls":
            pooled, h = h[:, 0], h[:, 1:]
        tokens = jnp.where(mask[..., None], h, 0)
        if self.pool == "mean":
            pooled = masked_mean(tokens, mask)
        elif self.pool == "last":
            last = jnp.maximum(mask.sum(-1) - 1, 0)
            pooled = jnp.take_along_axis(tokens, last[:, None, None], axis=1)[:, 0]
        return Encoded(pooled=pooled, tokens=tokens, mask=mask)
