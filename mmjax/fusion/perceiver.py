"""``perceiver``: latents cross-attending to all modalities' tokens (masking rule: :mod:`mmjax.fusion.attention_common`)."""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.fusion.attention_common import (
    TOKENS_AXIS, AttentionConfigError, CrossAttentionBlock, _check_common, _pooled_tokens, _project_tokens,
    _self_block,
)
from mmjax.fusion.base import prepare
from mmjax.fusion.registry import register
from mmjax.layers import dense
from mmjax.layers.transformer import layer_norm
from mmjax.sharding import EMBED, logical

Array = jax.Array


@register("perceiver")
class PerceiverFusion(nn.Module):
    """Perceiver (Jaegle et al. 2021) over the tokens of all modalities.

    Each modality's tokens are projected to (B, T_m, dim) plus a learned
    modality embedding (dim,) (so the latents can tell the sources apart),
    and concatenated into a (B, sum T_m, dim) byte array with its mask. The
    ``num_latents`` learned latents (N, dim) then go ``num_layers`` times
    through a :class:`CrossAttentionBlock` onto the byte array followed by
    ``num_self_layers`` latent self-attention blocks. The output is the mean
    of the LayerNormed latents (B, dim), Dense to (B, out_dim).

    Missing modality: its tokens are never keys. An example with no modality
    at all gets zero cross-attention updates, so its latents depend only on
    the learned parameters: a finite output.

    Attributes:
      out_dim: output width.
      dim, num_heads, num_layers (repeats), mlp_dim (default 4·dim), dropout_rate.
      num_latents: N.
      num_self_layers: latent self-attention blocks per repeat.
      share_weights: all repeats use the same cross- and self-attention weights.
      pos_emb: add learned positional embeddings (T_m, dim) per modality.
      pooled_token: prepend each modality's pooled vector as one more token
        (``with_pooled_token``; T_m counts it).
      readout: "mean" (the latents' mean only) or "pooled_token" (needs
        pooled_token=True): the head also reads each modality's projected
        pooled token, LayerNormed and zeroed where the modality is missing,
        concatenated to the latent mean, (B, (1 + M)·dim). The latents see the
        M pooled tokens as M of sum T_m keys; with small CNN encoders they
        carry most of the signal, and this path gives it to the head directly.
    """

    out_dim: int
    dim: int = 64
    num_heads: int = 4
    num_layers: int = 1
    num_latents: int = 8
    num_self_layers: int = 1
    mlp_dim: Optional[int] = None
    dropout_rate: float = 0.0
    share_weights: bool = False
    pos_emb: bool = False
    pooled_token: bool = False
    readout: str = "mean"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features, modality_mask=None, *, train: bool = False) -> Array:
        inputs = prepare(features, modality_mask, block="perceiver")
        inputs = _pooled_tokens("perceiver", inputs, self.pooled_token, self.readout)
        mlp_dim = _check_common("perceiver", self.dim, self.num_heads, self.num_layers, self.mlp_dim)
        _check_perceiver(self.num_latents, self.num_self_layers)
        x = _project_tokens(self, inputs, self.dim, self.pos_emb)
        byte, byte_mask = [], []
        for n in inputs.names:
            emb = self.param(
                f"modality_emb_{n}", logical(nn.initializers.normal(0.02), (EMBED,)), (self.dim,),
                self.param_dtype,
            )
            byte.append(x[n] + emb.astype(self.dtype))
            byte_mask.append(inputs.token_mask[n])
        byte = jnp.concatenate(byte, axis=1)
        byte_mask = jnp.concatenate(byte_mask, axis=1)

        latents = self.param(
            "latents",
            logical(nn.initializers.normal(0.02), (TOKENS_AXIS, EMBED)),
            (self.num_latents, self.dim),
            self.param_dtype,
        )
        z = jnp.broadcast_to(latents.astype(self.dtype)[None], (inputs.batch_size,) + latents.shape)
        repeats = 1 if self.share_weights else self.num_layers
        cross = [
            CrossAttentionBlock(
                self.num_heads, mlp_dim, self.dropout_rate, self.dtype, self.param_dtype, name=f"cross_{r}"
            )
            for r in range(repeats)
        ]
        selfs = [
            [_self_block(self, mlp_dim, f"self_{r}_{s}") for s in range(self.num_self_layers)]
            for r in range(repeats)
        ]
        for r in range(self.num_layers):
            j = 0 if self.share_weights else r
            z = cross[j](z, byte, byte_mask, train=train)
            for blk in selfs[j]:
                z = blk(z, None, train=train)
        z = layer_norm(self.dtype, self.param_dtype, "ln_final")(z).mean(axis=1)
        if self.readout == "pooled_token":
            z = jnp.concatenate([z] + [
                jnp.where(inputs.present[n][:, None],
                          layer_norm(self.dtype, self.param_dtype, f"ln_pooled_{n}")(x[n][:, 0]), 0)
                for n in inputs.names
            ], axis=-1)
        return dense(self.out_dim, dtype=self.dtype, param_dtype=self.param_dtype, name="out")(z)


def _check_perceiver(num_latents: int, num_self_layers: int) -> None:
    if num_latents < 1:
        raise AttentionConfigError(f"perceiver: num_latents must be >= 1, got {num_latents}")
    if num_self_layers < 0:
        raise AttentionConfigError(f"perceiver: num_self_layers must be >= 0, got {num_self_layers}")
