"""``bottleneck``: the Multimodal Bottleneck Transformer (masking rule: :mod:`mmjax.fusion.attention_common`)."""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.fusion.attention_common import (
    TOKENS_AXIS, AttentionConfigError, _check_common, _pooled_tokens, _project_tokens, _read_out,
    _safe_key_mask, _self_block,
)
from mmjax.fusion.base import prepare
from mmjax.fusion.registry import register
from mmjax.layers import dense
from mmjax.layers.transformer import layer_norm
from mmjax.sharding import EMBED, logical

Array = jax.Array


@register("bottleneck")
class BottleneckFusion(nn.Module):
    """Multimodal Bottleneck Transformer (Nagrani et al. 2021), for M >= 2 modalities.

    Each modality's tokens are projected to (B, T_m, dim) and run through
    ``num_layers`` pre-LN transformer layers. Layers ``i < fusion_layer`` are
    per-modality self-attention only. From ``fusion_layer`` on, modality m's
    layer self-attends over [own tokens; n_b shared bottleneck tokens]
    (B, T_m + n_b, dim), and after each such layer the updated bottleneck
    tokens are averaged over the modalities present in that example: the
    bottlenecks are the only path between modalities. Each modality is then
    LayerNormed and masked-mean pooled over its real tokens (or read out at the pooled token); the output is the
    mean over present modalities of these (B, dim) vectors, Dense to (B, out_dim).

    Missing modality (or one with no real token): its tokens are never keys, it
    is excluded from the bottleneck average and from the output mean. An
    example with no modality keeps the previous bottleneck tokens and outputs
    the output layer's bias.

    Attributes:
      out_dim: output width.
      dim, num_heads, num_layers, mlp_dim (default 4·dim), dropout_rate.
      fusion_layer: first layer with bottleneck exchange, 0 <= fusion_layer <=
        num_layers (== num_layers: no exchange, late fusion of the pooled outputs).
      num_bottlenecks: n_b learned bottleneck tokens (n_b, dim).
      share_weights: one set of layer weights for all modalities (input
        projections stay per modality since the D_m differ).
      pos_emb: add learned positional embeddings (T_m, dim) per modality.
      pooled_token, readout: as in :class:`CrossModalAttentionFusion`.
    """

    out_dim: int
    dim: int = 64
    num_heads: int = 4
    num_layers: int = 2
    fusion_layer: int = 0
    num_bottlenecks: int = 4
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
        inputs = prepare(features, modality_mask, block="bottleneck")
        inputs = _pooled_tokens("bottleneck", inputs, self.pooled_token, self.readout)
        mlp_dim = _check_common("bottleneck", self.dim, self.num_heads, self.num_layers, self.mlp_dim)
        _check_bottleneck(self.num_layers, self.fusion_layer, self.num_bottlenecks)
        names = inputs.names
        x = _project_tokens(self, inputs, self.dim, self.pos_emb)
        safe, has = {}, {}
        for n in names:
            safe[n], has[n] = _safe_key_mask(inputs.token_mask[n])
        weight = jnp.stack([has[n] for n in names], axis=1).astype(self.dtype)  # (B, M)
        count = weight.sum(axis=1)

        owners = ("shared",) if self.share_weights else names
        blocks = {
            (o, i): _self_block(self, mlp_dim, f"layer_{i}" if self.share_weights else f"{o}_layer_{i}")
            for o in owners
            for i in range(self.num_layers)
        }
        block = lambda n, i: blocks[("shared" if self.share_weights else n), i]  # noqa: E731

        bottleneck = None
        if self.fusion_layer < self.num_layers:
            init = self.param(
                "bottleneck",
                logical(nn.initializers.normal(0.02), (TOKENS_AXIS, EMBED)),
                (self.num_bottlenecks, self.dim),
                self.param_dtype,
            )
            bottleneck = jnp.broadcast_to(
                init.astype(self.dtype)[None], (inputs.batch_size,) + init.shape
            )
        nb = self.num_bottlenecks
        for i in range(self.num_layers):
            if i < self.fusion_layer:
                for n in names:
                    x[n] = block(n, i)(x[n], safe[n], train=train)
                continue
            updated = []
            for n in names:
                t = x[n].shape[1]
                seq = jnp.concatenate([x[n], bottleneck], axis=1)
                mask = jnp.concatenate([safe[n], jnp.ones((inputs.batch_size, nb), bool)], axis=1)
                out = block(n, i)(seq, mask, train=train)
                x[n] = out[:, :t]
                updated.append(out[:, t:])
            stacked = jnp.stack(updated, axis=1)  # (B, M, n_b, dim)
            # An average, not a matmul: elementwise, so the cost model's matmul count holds.
            total = (jnp.where(weight[..., None, None] > 0, stacked, 0) * weight[..., None, None]).sum(axis=1)
            avg = total / jnp.maximum(count, 1)[:, None, None]
            bottleneck = jnp.where(count[:, None, None] > 0, avg, bottleneck)

        pooled = []
        for n in owners:
            norm = layer_norm(self.dtype, self.param_dtype, "ln_final" if self.share_weights else f"{n}_ln_final")
            for m in (names if self.share_weights else (n,)):
                pooled.append(_read_out(norm(x[m]), inputs.token_mask[m], self.readout))
        pooled = jnp.stack(pooled, axis=1)  # (B, M, dim), names order
        pooled = jnp.where(weight[..., None] > 0, pooled, 0)
        z = pooled.sum(axis=1) / jnp.maximum(count, 1)[:, None]
        return dense(self.out_dim, dtype=self.dtype, param_dtype=self.param_dtype, name="out")(z)


def _check_bottleneck(num_layers: int, fusion_layer: int, num_bottlenecks: int) -> None:
    if not 0 <= fusion_layer <= num_layers:
        raise AttentionConfigError(
            f"bottleneck: fusion_layer={fusion_layer} must be in [0, num_layers={num_layers}]"
        )
    if fusion_layer < num_layers and num_bottlenecks < 1:
        raise AttentionConfigError(f"bottleneck: num_bottlenecks must be >= 1, got {num_bottlenecks}")
