"""``cross_attention``: MulT-style cross-modal transformers (masking rule: :mod:`mmjax.fusion.attention_common`)."""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from mmjax.fusion.attention_common import (
    CrossAttentionBlock, _check_common, _pooled_tokens, _project_tokens, _read_out,
)
from mmjax.fusion.base import prepare
from mmjax.fusion.registry import register
from mmjax.layers import dense
from mmjax.layers.transformer import layer_norm


@register("cross_attention")
class CrossModalAttentionFusion(nn.Module):
    """MulT-style cross-modal transformers (Tsai et al. 2019), for M >= 2 modalities.

    Each modality's tokens (B, T_m, D_m) are projected to (B, T_m, dim). For
    every target α and every source β != α (sorted-name order), a stack of
    ``num_layers`` :class:`CrossAttentionBlock` s lets α's tokens attend to β's
    (queries from α, keys/values from β, β's token mask as key padding mask)
    followed by a LayerNorm; sequences may have different lengths. Per target
    the M-1 outputs are concatenated on the feature axis, (B, T_α, (M-1)·dim),
    masked-mean pooled over α's real tokens (or read out at the pooled token), the M pooled vectors concatenated,
    (B, M·(M-1)·dim), and a final Dense maps to (B, out_dim).

    Missing modality: as a source its tokens are never keys and its slot in
    every target's concatenation is zeros (no contribution); as a target its
    pooled part is zeros (and its returned tokens are zeros).

    Attributes:
      out_dim: output width.
      dim: common token width (divisible by ``num_heads``).
      num_heads, num_layers (per ordered pair), mlp_dim (default 4·dim), dropout_rate.
      pos_emb: add learned positional embeddings (T_m, dim) per modality.
      pooled_token: prepend each modality's pooled vector as one more token
        (``with_pooled_token``; T_m counts it).
      readout: how each modality's tokens become one vector: "mean" (masked
        mean over real tokens) or "pooled_token" (the prepended token, like a
        class token; needs pooled_token=True). With small CNN encoders, whose
        per-position tokens say little alone, "pooled_token" learns far faster.
      return_tokens: return ``(pooled (B, out_dim), {m: (B, T_m, (M-1)·dim)})``.
    """

    out_dim: int
    dim: int = 64
    num_heads: int = 4
    num_layers: int = 1
    mlp_dim: Optional[int] = None
    dropout_rate: float = 0.0
    pos_emb: bool = False
    pooled_token: bool = False
    readout: str = "mean"
    return_tokens: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features, modality_mask=None, *, train: bool = False):
        inputs = prepare(features, modality_mask, block="cross_attention")
        inputs = _pooled_tokens("cross_attention", inputs, self.pooled_token, self.readout)
        mlp_dim = _check_common("cross_attention", self.dim, self.num_heads, self.num_layers, self.mlp_dim)
        x = _project_tokens(self, inputs, self.dim, self.pos_emb)
        masks = inputs.token_mask
        pooled, tokens = [], {}
        for a in inputs.names:
            per_source = []
            for b in inputs.names:
                if b == a:
                    continue
                h = x[a]
                for i in range(self.num_layers):
                    h = CrossAttentionBlock(
                        self.num_heads, mlp_dim, self.dropout_rate, self.dtype, self.param_dtype,
                        name=f"{a}_from_{b}_{i}",
                    )(h, x[b], masks[b], train=train)
                h = layer_norm(self.dtype, self.param_dtype, f"{a}_from_{b}_norm")(h)
                per_source.append(jnp.where(masks[b].any(-1)[:, None, None], h, 0))
            t = jnp.concatenate(per_source, axis=-1)
            t = jnp.where(masks[a][..., None], t, 0)
            tokens[a] = t
            pooled.append(_read_out(t, masks[a], self.readout))
        z = jnp.concatenate(pooled, axis=-1)
        out = dense(self.out_dim, dtype=self.dtype, param_dtype=self.param_dtype, name="out")(z)
        return (out, tokens) if self.return_tokens else out
