"""Early fusion for :class:`mmjax.models.classifier.Classifier` (``placement="early"``).

Each modality becomes tokens (by its encoder(s) when given, else by a default
tokenizer of the raw features), projected to ``early_width``, tagged with a
learned position table and modality embedding, concatenated along tokens and
run through one shared ``TransformerStack``.

These functions run inside the classifier's compact ``__call__`` and take it
as ``model``: their submodules and params (``proj_<m>``, ``pos_<m>``,
``modality_<m>``, ``embed_<m>``, ``shared``) sit at the classifier's top level,
where checkpoints have always had them.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.layers import TransformerStack, dense
from mmjax.layers.masked import masked_mean
from mmjax.models.fusion_choice import ModelConfigError
from mmjax.sharding import EMBED, FUSION_IN, logical

Array = jax.Array


def _raw_tokens(model: Any, modality: str, x: Array, mask: Optional[Array]) -> Tuple[Array, Array]:
    """A modality without an encoder: raw features -> ((B, T, F) tokens, (B, T) mask)."""
    if jnp.issubdtype(x.dtype, jnp.integer):
        if x.ndim != 2 or not model.early_vocab_size:
            raise ModelConfigError(
                f"early fusion: modality {modality!r} has integer ids {x.shape}; give it an encoder "
                "in model.encoders or set model.early_vocab_size"
            )
        tokens = nn.Embed(model.early_vocab_size, model.early_width, dtype=model.dtype,
                          param_dtype=model.param_dtype,
                          embedding_init=logical(nn.initializers.normal(0.02), ("vocab", EMBED)),
                          name=f"embed_{modality}")(x)
        return tokens, ((x != 0) if mask is None else mask)
    if x.ndim == 2:  # (B, D): one token
        return x[:, None, :], jnp.ones(x.shape[:1] + (1,), bool)
    if x.ndim == 3:  # (B, T, D) or audio-like sequences of frames
        return x, (jnp.ones(x.shape[:2], bool) if mask is None else mask)
    if x.ndim == 4:  # (B, H, W, C) image: non-overlapping patches
        p = model.early_patch_size
        b, h, w, c = x.shape
        if h % p or w % p:
            raise ModelConfigError(
                f"early fusion: image {modality!r} of size {h}x{w} is not divisible by early_patch_size={p}"
            )
        tokens = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, -1, p * p * c)
        return tokens, jnp.ones(tokens.shape[:2], bool)
    raise ModelConfigError(
        f"early fusion: modality {modality!r} input of shape {x.shape} has no default tokenizer; "
        "give it an encoder in model.encoders"
    )


def early_tokens(model: Any, modality: str, x: Array, mask: Optional[Array],
                 train: bool) -> Tuple[Array, Array]:
    """Raw input or encoder output -> ((B, T, early_width) tokens, (B, T) mask)."""
    if model.encoders.get(modality):
        enc = model._encode(modality, x, mask, train)
        tokens, tmask = enc.tokens, enc.mask
    else:
        tokens, tmask = _raw_tokens(model, modality, x, mask)
    if tokens.shape[1] > model.early_max_len:
        raise ModelConfigError(
            f"early fusion: modality {modality!r} has {tokens.shape[1]} tokens > early_max_len={model.early_max_len}"
        )
    tokens = dense(model.early_width, axes=(FUSION_IN, EMBED), dtype=model.dtype,
                   param_dtype=model.param_dtype, name=f"proj_{modality}")(tokens.astype(model.dtype))
    pos = model.param(f"pos_{modality}", logical(nn.initializers.normal(0.02), ("length", EMBED)),
                      (model.early_max_len, model.early_width), model.param_dtype)
    kind = model.param(f"modality_{modality}", logical(nn.initializers.normal(0.02), (EMBED,)),
                       (model.early_width,), model.param_dtype)
    tokens = tokens + pos[None, : tokens.shape[1]].astype(model.dtype) + kind.astype(model.dtype)
    return tokens, tmask.astype(bool)


def early_pooled(model: Any, inputs: Mapping[str, Array], token_mask: Mapping[str, Array],
                 modality_mask: Dict[str, Array], train: bool) -> Array:
    """All modalities' tokens through the shared transformer -> masked mean (B, early_width).

    A missing modality's tokens are masked out (and zeroed) for its examples.
    """
    toks, masks = [], []
    for m in sorted(inputs):
        t, tm = early_tokens(model, m, inputs[m], token_mask.get(m), train)
        if m in modality_mask:
            tm = tm & modality_mask[m].astype(bool)[:, None]
        toks.append(jnp.where(tm[..., None], t, 0))
        masks.append(tm)
    tokens = jnp.concatenate(toks, axis=1)
    mask = jnp.concatenate(masks, axis=1)
    h = TransformerStack(model.early_layers, model.early_heads, model.early_mlp_dim, model.dropout_rate,
                         dtype=model.dtype, param_dtype=model.param_dtype, name="shared")(tokens, mask, train=train)
    return masked_mean(h, mask)
