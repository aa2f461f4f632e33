"""Encoder-decoder captioner (image or audio -> text).

The encoder (a registry name) turns ``batch["inputs"][source]`` into tokens
(B, S, D_enc) with a token mask; a bias-free linear map brings them to the
decoder width; the decoder (``"transformer"`` or ``"lstm"``, see
:mod:`mmjax.layers.decoder`) predicts the caption.

Captions are ``batch["inputs"][target]``: (B, L) int32 ids, 0 = padding, each
ending with ``eos_id`` when it fits. Teacher forcing feeds the decoder
``[bos, y_1, ..., y_{L-1}]`` and scores ``[y_1, ..., y_L]``, so ``apply`` returns
logits (B, L, V) aligned with the caption itself; :func:`mmjax.losses.caption.caption_loss`
is the matching masked cross-entropy (re-exported here).

>>> model = Captioner(encoder={"encoder": "vit", ...}, vocab_size=1000, max_len=32)
>>> logits = model.apply(variables, batch)                       # (B, 32, 1000)
>>> tokens, scores = generate(model, variables, batch, beam_size=4)
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax import encoders as encoder_registry
from mmjax import tokenizer
from mmjax.layers import dense
from mmjax.layers.decoder import LSTMDecoder, TransformerDecoder
from mmjax.losses.caption import CaptionerConfigError, caption_loss, token_nll
from mmjax.models import decoding
from mmjax.sharding import EMBED, FUSION_IN

Array = jax.Array
DECODERS = ("transformer", "lstm")


def shift_right(targets: Array, bos_id: int) -> Array:
    """(B, L) -> (B, L) decoder inputs [bos, y_1, ..., y_{L-1}]."""
    return jnp.concatenate([jnp.full_like(targets[:, :1], bos_id), targets[:, :-1]], axis=1)


def strip_bos(targets: Array, bos_id: int, pad_id: int = 0) -> Array:
    """(B, L) -> (B, L): rows that begin with ``bos_id`` shifted left by one and padded at the end.

    Tokenised text from the data pipeline carries its own BOS; the captioner
    adds BOS itself when it shifts the targets right, so a second one would
    teach it to emit BOS and would cost the first real token at decoding.
    """
    shifted = jnp.concatenate([targets[:, 1:], jnp.full_like(targets[:, :1], pad_id)], axis=1)
    return jnp.where(targets[:, :1] == bos_id, shifted, targets)


class Captioner(nn.Module):
    """Encoder + transformer or LSTM decoder.

    Attributes:
      encoder: {"encoder": registry name, **kwargs} for the source modality.
      vocab_size: V; max_len: the longest caption (decoder positions / decode length).
      source, target: modality names in ``batch["inputs"]``.
      decoder: "transformer" or "lstm".
      width: decoder width D (LSTM hidden size); num_layers, num_heads, mlp_dim:
        transformer sizes; tie_embeddings: transformer output tied to the embedding.
      lstm_attention: additive attention in the LSTM decoder.
      bos_id, eos_id, pad_id: special ids (pad must be 0, the batch convention).
      decode: build the cached incremental decoder (used by :func:`make_step_fn`).
    """

    encoder: Mapping[str, Any]
    vocab_size: int
    max_len: int
    source: str = "image"
    target: str = "text"
    decoder: str = "transformer"
    width: int = 256
    num_layers: int = 2
    num_heads: int = 4
    mlp_dim: int = 1024
    dropout_rate: float = 0.0
    tie_embeddings: bool = True
    lstm_attention: bool = True
    bos_id: int = tokenizer.BOS_ID  # the ids the library's tokenizer writes
    eos_id: int = tokenizer.EOS_ID
    pad_id: int = tokenizer.PAD_ID
    decode: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        if self.decoder not in DECODERS:
            raise CaptionerConfigError(f"captioner: decoder must be one of {DECODERS}, got {self.decoder!r}")
        if self.pad_id != 0 or len({self.bos_id, self.eos_id, self.pad_id}) != 3:
            raise CaptionerConfigError(
                f"captioner: need pad_id=0 and distinct bos/eos/pad ids, got "
                f"bos_id={self.bos_id}, eos_id={self.eos_id}, pad_id={self.pad_id}"
            )
        cfg = dict(self.encoder)
        if "encoder" not in cfg:
            raise CaptionerConfigError(f"captioner: encoder config needs an 'encoder' key, got {sorted(cfg)}")
        name = cfg.pop("encoder")
        cfg.setdefault("dtype", self.dtype)
        cfg.setdefault("param_dtype", self.param_dtype)
        self.source_encoder = encoder_registry.create(name, **cfg)
        self.context_proj = dense(
            self.width, axes=(FUSION_IN, EMBED), use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype
        )
        if self.decoder == "transformer":
            self.text_decoder = TransformerDecoder(
                vocab_size=self.vocab_size,
                max_len=self.max_len,
                width=self.width,
                num_layers=self.num_layers,
                num_heads=self.num_heads,
                mlp_dim=self.mlp_dim,
                dropout_rate=self.dropout_rate,
                tie_embeddings=self.tie_embeddings,
                decode=self.decode,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
            )
        else:
            self.text_decoder = LSTMDecoder(
                vocab_size=self.vocab_size,
                hidden=self.width,
                embed_dim=self.width,
                attention=self.lstm_attention,
                attention_dim=self.width,
                dropout_rate=self.dropout_rate,
                decode=self.decode,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
            )

    def encode(self, inputs: Array, mask: Optional[Array] = None, *, train: bool = False):
        """Source input -> (context (B, S, D), context_mask (B, S), pooled (B, D))."""
        enc = self.source_encoder(inputs, mask, train=train)
        return self.context_proj(enc.tokens), enc.mask.astype(bool), self.context_proj(enc.pooled)

    def decode_tokens(self, tokens, context, context_mask, pooled, token_mask=None, *, train: bool = False):
        """Decoder only: tokens (B, T) -> logits (B, T, V)."""
        return self.text_decoder(tokens, context, context_mask, token_mask, pooled, train=train)

    def __call__(self, batch: Mapping[str, Any], *, train: bool = False) -> Array:
        """Teacher forcing: batch -> logits (B, L, V) for the targets ``batch["inputs"][target]``
        (a leading BOS in a target row is dropped first: see :func:`strip_bos`)."""
        inputs = batch.get("inputs", {})
        for m in (self.source, self.target):
            if m not in inputs:
                raise CaptionerConfigError(
                    f"captioner: batch['inputs'] has no {m!r} (has {sorted(inputs)})"
                )
        targets = inputs[self.target]
        if targets.ndim != 2 or not jnp.issubdtype(targets.dtype, jnp.integer):
            raise CaptionerConfigError(
                f"captioner: batch['inputs'][{self.target!r}] must be (B, L) int ids, "
                f"got shape {tuple(targets.shape)} dtype {targets.dtype}"
            )
        if targets.shape[1] > self.max_len:
            raise CaptionerConfigError(
                f"captioner: captions of length {targets.shape[1]} exceed max_len={self.max_len}"
            )
        targets = strip_bos(targets, self.bos_id, self.pad_id)
        token_mask = (batch.get("token_mask") or {}).get(self.source)
        context, context_mask, pooled = self.encode(inputs[self.source], token_mask, train=train)
        dec_in = shift_right(targets, self.bos_id)
        return self.decode_tokens(dec_in, context, context_mask, pooled, dec_in != self.pad_id, train=train)


def make_step_fn(
    model: Captioner,
    params: Any,
    context: Array,
    context_mask: Array,
    pooled: Array,
    max_len: int,
) -> Tuple[Callable, Any]:
    """Builds ``step_fn(tokens (N,), cache) -> (logits (N, V), cache)`` and its
    initial (zero) cache for the N rows of ``context``. The step's logits for
    ``bos_id`` and ``pad_id`` are set to -1e9 so decoding never emits them.

    The cache is the decode-mode model's ``"cache"`` collection, its shapes
    taken from ``jax.eval_shape`` of an ``init`` on a (N, max_len) dummy (no
    parameters are created or computed).
    """
    if max_len > model.max_len:
        raise CaptionerConfigError(f"decode length {max_len} exceeds the model's max_len={model.max_len}")
    dmodel = model.clone(decode=True)
    n = context.shape[0]
    shapes = jax.eval_shape(
        lambda: dmodel.init(
            jax.random.key(0), jnp.zeros((n, max_len), jnp.int32), context, context_mask, pooled,
            method=Captioner.decode_tokens,
        )["cache"]
    )
    cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    def step_fn(tokens, cache):
        logits, updated = dmodel.apply(
            {"params": params, "cache": cache}, tokens[:, None], context, context_mask, pooled,
            method=Captioner.decode_tokens, mutable=["cache"],
        )
        # BOS and padding are never real caption tokens: forbid them.
        logits = logits[:, 0].at[:, jnp.array([model.bos_id, model.pad_id])].set(-1e9)
        return logits, updated["cache"]

    return step_fn, cache


def generate(
    model: Captioner,
    variables: Mapping[str, Any],
    batch: Mapping[str, Any],
    *,
    max_len: Optional[int] = None,
    beam_size: int = 1,
    alpha: float = 0.6,
) -> Tuple[Array, Array]:
    """Captions for ``batch["inputs"][model.source]``; jit-compatible (wrap it in
    ``jax.jit(..., static_argnames=("model", "max_len", "beam_size", "alpha"))``
    or jit a closure).

    Returns:
      beam_size == 1: greedy tokens (B, max_len) and log-probabilities (B,);
      beam_size > 1: the best beam's tokens (B, max_len) and its
      length-normalised score (B,). Tokens exclude BOS, keep EOS, pad with 0.
    """
    max_len = max_len or model.max_len
    params = variables["params"]
    inputs = batch["inputs"][model.source]
    mask = (batch.get("token_mask") or {}).get(model.source)
    context, context_mask, pooled = model.apply(variables, inputs, mask, method=Captioner.encode)
    b = context.shape[0]
    ids = dict(bos_id=model.bos_id, eos_id=model.eos_id, pad_id=model.pad_id)
    if beam_size == 1:
        step_fn, cache = make_step_fn(model, params, context, context_mask, pooled, max_len)
        return decoding.greedy_decode(step_fn, cache, b, max_len, **ids)
    context, context_mask, pooled = decoding.tile_beams((context, context_mask, pooled), beam_size)
    step_fn, cache = make_step_fn(model, params, context, context_mask, pooled, max_len)
    tokens, scores = decoding.beam_search(step_fn, cache, b, beam_size, max_len, alpha=alpha, **ids)
    return tokens[:, 0], scores[:, 0]


__all__ = ["Captioner", "CaptionerConfigError", "caption_loss", "token_nll", "generate", "make_step_fn", "shift_right", "strip_bos"]
