"""``mlp``: an encoder for precomputed feature vectors (e.g. 768-d text, 2048-d image)."""
from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.encoders.common import EncoderInputError
from mmjax.encoders.registry import register
from mmjax.layers import dense
from mmjax.sharding import EMBED, MLP
from mmjax.types import Encoded


@register("mlp")
class MlpEncoder(nn.Module):
    """(B, D_in) or (B, T, D_in) features -> Encoded with width ``features[-1]``.

    Dense -> GELU (-> Dropout) per hidden layer; the last layer has no activation.
    Token inputs keep their tokens and are mean-pooled over ``mask``.

    Attributes:
      features: widths of the layers, e.g. (256, 128).
      dropout_rate: dropout after each hidden activation.
      normalize_input: LayerNorm the input first (useful for raw feature vectors).
    """

    features: Sequence[int] = (128,)
    dropout_rate: float = 0.0
    normalize_input: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: Optional[jax.Array] = None, *, train: bool = False) -> Encoded:
        if x.ndim not in (2, 3):
            raise EncoderInputError(f"mlp encoder: expected (B, D) or (B, T, D) features, got shape {x.shape}")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise EncoderInputError(
                f"mlp encoder: expected float features, got {x.dtype} {tuple(x.shape)} (integer ids such as "
                "tokens need a text encoder: transformer, lstm, gru, minilm)")
        if x.shape[-1] == 0:
            raise EncoderInputError(f"mlp encoder: features of width 0 {tuple(x.shape)}")
        squeeze = x.ndim == 2
        if squeeze:
            x = x[:, None, :]
        if mask is None:
            mask = jnp.ones(x.shape[:2], bool)
        h = x.astype(self.dtype)
        if self.normalize_input:
            h = nn.LayerNorm(dtype=self.dtype, param_dtype=self.param_dtype, name="input_norm")(h)
        for i, width in enumerate(self.features):
            # Alternate the sharded side so consecutive layers need no resharding.
            axes = (EMBED, MLP) if i % 2 == 0 else (MLP, EMBED)
            h = dense(width, axes=axes, dtype=self.dtype, param_dtype=self.param_dtype, name=f"dense_{i}")(h)
            if i < len(self.features) - 1:
                h = nn.gelu(h)
                h = nn.Dropout(self.dropout_rate)(h, deterministic=not train)
        m = mask[..., None]
        pooled = jnp.where(m, h, 0).sum(1) / jnp.maximum(m.sum(1), 1).astype(h.dtype)
        return Encoded(pooled=pooled, tokens=h, mask=mask)
