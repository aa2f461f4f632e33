"""Factorised bilinear pooling: ``bilinear`` (MFB, Yu et al. 2017)."""
from __future__ import annotations

import itertools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.fusion.base import FusionInputError, prepare
from mmjax.fusion.cost import Cost, register_cost
from mmjax.fusion.registry import register
from mmjax.layers import dense
from mmjax.sharding import FUSION_IN, RANK


def signed_sqrt(z: jax.Array, eps: float) -> jax.Array:
    """sign(z) * (sqrt(|z| + eps) - sqrt(eps)).

    The plain signed square root has an infinite derivative at 0 (and pairs
    that are masked out are exactly 0). Shifting by eps bounds the slope at
    1 / (2 sqrt(eps)) and subtracting sqrt(eps) keeps f(0) = 0 and f odd.
    """
    return jnp.sign(z) * (jnp.sqrt(jnp.abs(z) + eps) - jnp.sqrt(eps))


def l2_normalize(z: jax.Array, eps: float) -> jax.Array:
    """z / max(||z||, sqrt(eps)) over the last axis: 0 stays 0 with finite gradient."""
    sq = jnp.sum(z * z, axis=-1, keepdims=True)
    return z * jax.lax.rsqrt(jnp.maximum(sq, eps))


@register("bilinear")
class BilinearFusion(nn.Module):
    """Multi-modal Factorised Bilinear pooling, on every unordered pair of modalities.

    For a pair (x, y) (names in sorted order):

        p = (U^T x + b_U) * (V^T y + b_V)          (B, k * o), U: d_x x (k * o)
        z = SumPool_k(p)                            (B, o): sums groups of k consecutive units
        z = sign(z) * (sqrt(|z| + eps) - sqrt(eps)) power normalisation, finite slope at 0
        z = z / max(||z||_2, sqrt(eps))             L2 normalisation, safe at 0

    with k = ``factor_dim`` and o = ``pair_dim`` (default ``out_dim``).
    Optional dropout on p (as in the MFB code). The P = M(M-1)/2 pair outputs
    are concatenated in pair order ((0,1), (0,2), ..., (1,2), ...) into
    (B, P * o); if P * o != out_dim, a final linear projection maps that to
    out_dim (so with two modalities and the default pair_dim there is none).

    Input: pooled (B, D_m) or tokens (B, T_m, D_m) per modality. Output: (B, out_dim).

    Missing modality: every pair involving it outputs zeros (before the
    projection, which then adds only its bias for those slots).

    Attributes:
      out_dim: output width.
      factor_dim: k, the factor (sum-pooling window); 5 in the paper.
      pair_dim: o, per-pair output width; None = out_dim.
      dropout_rate: dropout on the elementwise product (train only).
      eps: the power / L2 normalisation epsilon.
    """

    out_dim: int
    factor_dim: int = 5
    pair_dim: Optional[int] = None
    dropout_rate: float = 0.0
    eps: float = 1e-8
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features, modality_mask=None, *, train: bool = False) -> jax.Array:
        inputs = prepare(features, modality_mask, block="bilinear")
        if self.factor_dim < 1:
            raise FusionInputError(f"bilinear: config factor_dim must be >= 1, got {self.factor_dim}")
        k, o = self.factor_dim, self.pair_dim or self.out_dim
        kw = dict(axes=(FUSION_IN, RANK), dtype=self.dtype, param_dtype=self.param_dtype)
        outs = []
        for a, b in itertools.combinations(inputs.names, 2):
            x = dense(k * o, **kw, name=f"U_{a}_{b}")(inputs.pooled[a].astype(self.dtype))
            y = dense(k * o, **kw, name=f"V_{a}_{b}")(inputs.pooled[b].astype(self.dtype))
            p = nn.Dropout(self.dropout_rate)(x * y, deterministic=not train)
            # Normalise in >= float32: sqrt near 0 and the squared norm lose too much in bf16.
            z = p.reshape(p.shape[0], o, k).sum(-1).astype(jnp.promote_types(self.dtype, jnp.float32))
            z = l2_normalize(signed_sqrt(z, self.eps), self.eps)
            both = (inputs.present[a] & inputs.present[b])[:, None]
            outs.append(jnp.where(both, z, 0).astype(self.dtype))
        z = jnp.concatenate(outs, axis=-1)
        if z.shape[-1] != self.out_dim:
            z = dense(self.out_dim, dtype=self.dtype, param_dtype=self.param_dtype, name="proj")(z)
        return z


@register_cost("bilinear")
def _bilinear_cost(dims, out_dim, factor_dim: int = 5, pair_dim: Optional[int] = None, **config) -> Cost:
    """U/V projections per pair and the optional final projection; the product,
    sum pooling and normalisations (elementwise) are not counted."""
    k, o = factor_dim, pair_dim or out_dim
    params = flops = 0
    pairs = list(itertools.combinations(dims, 2))
    for dx, dy in pairs:
        params += (dx + 1 + dy + 1) * k * o
        flops += 2 * (dx + dy) * k * o
    if len(pairs) * o != out_dim:
        params += (len(pairs) * o + 1) * out_dim
        flops += 2 * len(pairs) * o * out_dim
    return Cost(params=params, flops=flops)
