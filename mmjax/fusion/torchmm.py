"""TorchMultimodal's fusions: ``attention_fusion``, ``deepset``, ``deepset_transformer``.

Written after ``torchmultimodal/modules/fusions/attention_fusion.py`` and
``deepset_fusion.py`` (facebookresearch/multimodal). Every modality is a
pooled vector here: (B, D_m), or tokens (B, T_m, D_m) mean-pooled by
``prepare``. Any number M >= 2 of modalities.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.fusion.base import FusionInputError, FusionInputs, prepare
from mmjax.fusion.cost import Cost, register_cost
from mmjax.fusion.pooling import masked_softmax
from mmjax.fusion.registry import register
from mmjax.layers import dense
from mmjax.layers.transformer import TransformerStack

Array = jax.Array
POOLINGS = ("sum", "mean", "max")


@register("attention_fusion")
class AttentionFusion(nn.Module):
    """Input-dependent attention over modalities (TorchMultimodal ``AttentionFusionModule``).

        w = softmax(W_a [z_1; ...; z_M] + b_a)      (B, M): per-example weights
        z = sum_m w_m (W_m z_m + b_m)               (B, out_dim)

    Unlike ``weighted`` (one learned softmax shared by every example), the
    weights are computed from the example's own features.

    Missing modality: its slice of the concatenation is zeros and its weight
    is excluded, the softmax renormalised over the present modalities. An
    example with no modality present gets zeros.

    Attributes:
      out_dim: the common projection width; None = the smallest D_m (TorchMultimodal's default).
    """

    out_dim: Optional[int] = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features, modality_mask=None, *, train: bool = False) -> Array:
        inputs = prepare(features, modality_mask, block="attention_fusion")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        z = [inputs.pooled[n].astype(self.dtype) for n in inputs.names]
        p = self.out_dim or min(inputs.dims().values())
        logits = dense(len(z), **kw, name="attention")(jnp.concatenate(z, axis=-1))
        present = inputs.present_matrix(bool)
        w = masked_softmax(logits.astype(jnp.promote_types(self.dtype, jnp.float32)), present, axis=1)
        v = jnp.stack([dense(p, **kw, name=f"proj_{n}")(x) for n, x in zip(inputs.names, z)], axis=1)
        return jnp.einsum("bm,bmo->bo", w.astype(self.dtype), v)


def lp_normalize(x: Array, p: float, axis: int, eps: float = 1e-12) -> Array:
    """x / max(||x||_p, eps) along ``axis`` (torch's F.normalize); 0 stays 0 with a finite gradient."""
    s = jnp.sum(jnp.abs(x) ** p, axis=axis, keepdims=True)
    norm = jnp.where(s > 0, jnp.where(s > 0, s, 1.0) ** (1.0 / p), 0.0)
    return x / jnp.maximum(norm, eps)


class _DeepSetBase(nn.Module):
    """What ``deepset`` and ``deepset_transformer`` share: phi, attention, normalisation, rho."""

    def embed(self, inputs: FusionInputs, block: str) -> Tuple[Array, Array]:
        """-> (B, M, P) projected, attended and normalised modalities (zero where missing), (B, M) presence."""
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        dims = inputs.dims()
        if not self.project and len(set(dims.values())) != 1:
            raise FusionInputError(f"{block}: project=False needs equal modality widths, got {dims}")
        p = (self.proj_dim or min(dims.values())) if self.project else dims[inputs.names[0]]
        present = inputs.present_matrix(bool)
        xs = []
        for n in inputs.names:
            x = inputs.pooled[n].astype(self.dtype)
            xs.append(dense(p, **kw, name=f"proj_{n}")(x) if self.project else x)
        x = jnp.where(present[..., None], jnp.stack(xs, axis=1), 0)
        wide = jnp.promote_types(self.dtype, jnp.float32)
        if self.apply_attention:
            h = jnp.tanh(dense(self.attention_dim or max(p // 2, 1), **kw, name="attention_hidden")(x))
            a = dense(1, **kw, name="attention_score")(h)[..., 0]
            x = x * masked_softmax(a.astype(wide), present, axis=1)[..., None].astype(self.dtype)
        x = lp_normalize(x.astype(wide), self.norm_factor, axis=1 if self.modality_normalize else 2)
        return x.astype(self.dtype), present

    def rho(self, h: Array, train: bool) -> Array:
        """TorchMultimodal's MLP: (Dense -> ReLU -> Dropout) per hidden width, then Dense(out_dim)."""
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        for i, width in enumerate(self.hidden_dims):
            h = nn.relu(dense(width, **kw, name=f"mlp_{i}")(h))
            h = nn.Dropout(self.dropout_rate)(h, deterministic=not train)
        return dense(self.out_dim, **kw, name="out")(h)


@register("deepset")
class DeepSetFusion(_DeepSetBase):
    """DeepSet fusion (TorchMultimodal ``DeepsetFusionModule``; Zaheer et al. 2017).

        x_m = W_m z_m + b_m                  (B, P), or z_m itself if project=False
        x_m = a_m x_m                        optional attention, a = softmax_m(w^T tanh(A x_m))
        x   = x / ||x||_p                    over features (or over modalities if modality_normalize)
        z   = MLP(pool_m x_m)                pool = sum | mean | max over modalities

    Permutation-invariant over modalities (up to the per-modality projections).

    Missing modality: excluded from the attention softmax and from the pool
    (sum and max over the present ones, mean divided by their count). An
    example with no modality present pools to zeros and outputs MLP(0).

    Attributes:
      out_dim: MLP output width.
      proj_dim: P; None = the smallest D_m (TorchMultimodal's use_auto_mapping).
      project: False = no projection (equal D_m required), as TorchMultimodal's default.
      pooling: "sum", "mean" or "max".
      apply_attention, attention_dim (default P // 2): the optional modality attention.
      modality_normalize, norm_factor: the L_p normalisation axis and p.
      hidden_dims, dropout_rate: the MLP's hidden widths (ReLU) and dropout.
    """

    out_dim: int
    proj_dim: Optional[int] = None
    project: bool = True
    pooling: str = "sum"
    apply_attention: bool = False
    attention_dim: Optional[int] = None
    modality_normalize: bool = False
    norm_factor: float = 2.0
    hidden_dims: Sequence[int] = ()
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features, modality_mask=None, *, train: bool = False) -> Array:
        inputs = prepare(features, modality_mask, block="deepset")
        if self.pooling not in POOLINGS:
            raise FusionInputError(f"deepset: pooling must be one of {POOLINGS}, got {self.pooling!r}")
        x, present = self.embed(inputs, "deepset")
        pm = present[..., None]
        if self.pooling == "max":
            low = jnp.finfo(x.dtype).min
            pooled = jnp.where(pm.any(axis=1), jnp.where(pm, x, low).max(axis=1), 0)
        else:
            pooled = jnp.where(pm, x, 0).sum(axis=1)
            if self.pooling == "mean":
                pooled = pooled / jnp.maximum(present.sum(axis=1, keepdims=True), 1).astype(x.dtype)
        return self.rho(pooled, train)


@register("deepset_transformer")
class DeepSetTransformerFusion(_DeepSetBase):
    """DeepSet fusion with transformer pooling (TorchMultimodal ``DeepsetFusionWithTransformer``).

    The M projected, normalised vectors of :class:`DeepSetFusion` are a
    sequence (B, M, P) for ``num_layers`` pre-LN transformer layers
    (``mmjax.layers.TransformerStack``, GELU MLP of width ``mlp_dim``, final
    LayerNorm); the output at the first position (the first modality in sorted
    order, as TorchMultimodal reads ``pooled[:, 0]``) goes through the MLP.
    TorchMultimodal's ``nn.TransformerEncoderLayer`` is post-LN with ReLU and
    width 2048; this is the pre-LN layer the rest of mmjax uses.

    Missing modality: its position is never an attention key; the first
    position is still read when its own modality is missing (its input is then
    zeros and it sees only the present modalities). An example with no
    modality present attends over all positions (all zeros): a finite output.

    Attributes:
      out_dim, proj_dim, project, apply_attention, attention_dim, modality_normalize,
      norm_factor, hidden_dims, dropout_rate: as in :class:`DeepSetFusion`.
      num_heads (must divide P), num_layers, mlp_dim (default 4 P).
    """

    out_dim: int
    proj_dim: Optional[int] = None
    project: bool = True
    apply_attention: bool = False
    attention_dim: Optional[int] = None
    modality_normalize: bool = False
    norm_factor: float = 2.0
    hidden_dims: Sequence[int] = ()
    dropout_rate: float = 0.0
    num_heads: int = 2
    num_layers: int = 1
    mlp_dim: Optional[int] = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features, modality_mask=None, *, train: bool = False) -> Array:
        inputs = prepare(features, modality_mask, block="deepset_transformer")
        x, present = self.embed(inputs, "deepset_transformer")
        p = x.shape[-1]
        if p % self.num_heads:
            raise FusionInputError(f"deepset_transformer: width P={p} is not divisible by num_heads={self.num_heads}")
        mask = present | ~present.any(axis=1, keepdims=True)
        h = TransformerStack(self.num_layers, self.num_heads, self.mlp_dim or 4 * p, self.dropout_rate,
                             dtype=self.dtype, param_dtype=self.param_dtype, name="transformer")(x, mask, train=train)
        return self.rho(h[:, 0], train)


# ----------------------------------------------------------------------------- cost models


@register_cost("attention_fusion")
def _attention_fusion_cost(dims, out_dim, **config) -> Cost:
    """Attention logits and projections, plus the M-long weighted sum per output unit."""
    m, d, p = len(dims), sum(dims), out_dim or min(dims)
    return Cost(params=(d + 1) * m + sum((x + 1) * p for x in dims),
                flops=2 * d * m + sum(2 * x * p for x in dims) + 2 * m * p)


def _deepset_common(dims, proj_dim, project, apply_attention, attention_dim) -> Tuple[int, int, int]:
    """(P, params, flops) of the projections and the optional attention."""
    m = len(dims)
    p = (proj_dim or min(dims)) if project else dims[0]
    params = sum((x + 1) * p for x in dims) if project else 0
    flops = sum(2 * x * p for x in dims) if project else 0
    if apply_attention:
        a = attention_dim or max(p // 2, 1)
        params += (p + 1) * a + a + 1
        flops += m * (2 * p * a + 2 * a)
    return p, params, flops


def _mlp_cost(p: int, hidden_dims: Sequence[int], out_dim: int) -> Tuple[int, int]:
    params = flops = 0
    for w in list(hidden_dims) + [out_dim]:
        params += (p + 1) * w
        flops += 2 * p * w
        p = w
    return params, flops


@register_cost("deepset")
def _deepset_cost(dims, out_dim, proj_dim=None, project=True, apply_attention=False, attention_dim=None,
                  hidden_dims=(), **config) -> Cost:
    """Projections, attention and MLP; normalisation and pooling (elementwise) not counted."""
    p, params, flops = _deepset_common(dims, proj_dim, project, apply_attention, attention_dim)
    mp, mf = _mlp_cost(p, hidden_dims, out_dim)
    return Cost(params=params + mp, flops=flops + mf)


@register_cost("deepset_transformer")
def _deepset_transformer_cost(dims, out_dim, proj_dim=None, project=True, apply_attention=False,
                              attention_dim=None, hidden_dims=(), num_layers=1, mlp_dim=None, **config) -> Cost:
    """As ``deepset``, plus ``num_layers`` transformer layers over M tokens and a final LayerNorm."""
    from mmjax.fusion.attention import _self_block_flops, _self_block_params

    p, params, flops = _deepset_common(dims, proj_dim, project, apply_attention, attention_dim)
    mlp = mlp_dim or 4 * p
    params += num_layers * _self_block_params(p, mlp) + 2 * p
    flops += num_layers * _self_block_flops(p, mlp, len(dims))
    mp, mf = _mlp_cost(p, hidden_dims, out_dim)
    return Cost(params=params + mp, flops=flops + mf)
