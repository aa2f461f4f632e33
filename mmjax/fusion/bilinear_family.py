"""The bilinear family of block.bootstrap.pytorch / MMF: ``mlb``, ``mfh``, ``mutan``, ``block``.

Each follows ``block/models/networks/fusions/fusions.py`` of
Cadene/block.bootstrap.pytorch (which MMF's ``mmf/modules/fusions.py``
copies): per-modality linear projections, a multiplicative interaction, an
optional power + L2 normalisation and ``linear_out`` to ``out_dim``.

More than two modalities: the published methods are bilinear (two inputs).
Every block here chains the elementwise product over the modalities in
sorted-name order, h_1 * h_2 * ... * h_M; for two modalities that is the
published block exactly, for M it is the same decomposition of an order
M + 1 tensor (a low-rank multilinear pooling). The product commutes, so the
order only fixes parameter names.

Missing modality (mask False): its input is zeroed (``prepare``), so its
factor becomes what its projections make of 0 (their biases, through the
activation): the block still runs, with that modality's factor constant.
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.fusion.base import FusionInputError, prepare
from mmjax.fusion.bilinear_family_common import (  # noqa: F401  (re-exported: compact_bilinear, tests)
    ACTIVATIONS, _Family, _linear, _sum_groups, _total, activation, get_sizes_list, power_l2,
)
from mmjax.fusion.cost import Cost, register_cost
from mmjax.fusion.registry import register
from mmjax.sharding import FUSION_IN, RANK


@register("mlb")
class MLBFusion(_Family):
    """Multimodal Low-rank Bilinear pooling (Kim et al. 2017, "Hadamard Product for
    Low-rank Bilinear Pooling"):

        h_m = act_in(W_m x_m + b_m)          (B, mm_dim) per modality
        z = h_1 * h_2 * ... * h_M            (B, mm_dim), chained in name order
        z = power_l2(z) if normalize
        out = act_out(W_out z + b_out)       (B, out_dim)

    act_in is tanh as in the paper (block.bootstrap's default is relu);
    act_out relu as in block.bootstrap / MMF (None to drop it).

    Input: pooled (B, D_m) or tokens (B, T_m, D_m) (mean-pooled) per modality.
    Missing modality: input zeroed, so h_m = act_in(b_m).

    Attributes:
      out_dim: output width.
      mm_dim: width of the joint (Hadamard) space; 1200 in the published code.
      activ_input, activ_output: "relu", "tanh", "sigmoid" or None.
      normalize: signed sqrt + L2 normalisation of z.
      dropout_rate: dropout on z before linear_out (train only).
      eps: normalisation epsilon.
    """

    out_dim: int
    mm_dim: int = 1200
    activ_input: Optional[str] = "tanh"
    activ_output: Optional[str] = "relu"
    normalize: bool = False
    dropout_rate: float = 0.0
    eps: float = 1e-8
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    block_name = "mlb"

    @nn.compact
    def __call__(self, features, modality_mask=None, *, train: bool = False) -> jax.Array:
        inputs = prepare(features, modality_mask, block="mlb")
        act = activation(self.activ_input, "mlb", "activ_input")
        z = None
        for n in inputs.names:
            h = act(self._dense(self.mm_dim, f"linear_{n}")(inputs.pooled[n].astype(self.dtype)))
            z = h if z is None else z * h
        if self.normalize:
            z = power_l2(z, self.eps)
        return self._output(z, train, self.activ_output)


@register("mfh")
class MFHFusion(_Family):
    """Multi-modal Factorised High-order pooling (Yu et al. 2018): a cascade of
    ``order`` MFB blocks, each multiplying in the previous one's expanded product:

        p_i = prod_m act_in(W_{m,i} x_m + b_{m,i}) * p_{i-1}   (B, mm_dim * factor), p_0 = 1
        z_i = SumPool_factor(p_i)                               (B, mm_dim): view (B, mm_dim, factor), sum
        z_i = power_l2(z_i) if normalize
        out = act_out(W_out [z_1; ...; z_order] + b_out)        (B, out_dim)

    ``order`` = 2 is the published MFH (block.bootstrap / MMF hard-code two
    blocks); 1 is MFB with a linear_out. Dropout (``dropout_rate``) is on
    each p_i, where the published code puts ``dropout_pre_lin``.
    More than two modalities: prod_m chains every modality's factor in
    sorted-name order (the published MFH is M = 2).

    Input: pooled (B, D_m) or tokens (B, T_m, D_m) (mean-pooled) per modality.
    Missing modality: input zeroed, so its factors are act_in(b_{m,i}).

    Attributes:
      out_dim: output width.
      mm_dim: width of each z_i; 1200 in the published code.
      factor: k, the sum-pooling window; 2 in the published code.
      order: number of cascaded MFB blocks p.
      activ_input, activ_output: "relu", "tanh", "sigmoid" or None (relu both, as published).
      normalize: signed sqrt + L2 normalisation of each z_i (the paper's; off by default as published).
      dropout_rate, eps: as in ``mlb``.
    """

    out_dim: int
    mm_dim: int = 1200
    factor: int = 2
    order: int = 2
    activ_input: Optional[str] = "relu"
    activ_output: Optional[str] = "relu"
    normalize: bool = False
    dropout_rate: float = 0.0
    eps: float = 1e-8
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    block_name = "mfh"

    @nn.compact
    def __call__(self, features, modality_mask=None, *, train: bool = False) -> jax.Array:
        inputs = prepare(features, modality_mask, block="mfh")
        act = activation(self.activ_input, "mfh", "activ_input")
        width = self.mm_dim * self.factor
        p, zs = None, []
        for i in range(self.order):
            for n in inputs.names:
                h = act(self._dense(width, f"linear_{n}_{i}", (FUSION_IN, RANK))(inputs.pooled[n].astype(self.dtype)))
                p = h if p is None else p * h
            p = nn.Dropout(self.dropout_rate)(p, deterministic=not train)
            z = _sum_groups(p, self.factor, self.mm_dim, outer=False)
            zs.append(power_l2(z, self.eps) if self.normalize else z)
        z = self._dense(self.out_dim, "linear_out")(jnp.concatenate(zs, axis=-1))
        return activation(self.activ_output, "mfh", "activ_output")(z)


@register("mutan")
class MutanFusion(_Family):
    """MUTAN (Ben-younes et al. 2017): a Tucker decomposition whose core is a sum
    of ``rank`` rank-one terms, as block.bootstrap / MMF write it:

        x~_m = W_m x_m + b_m                 (B, mm_dim)
        q_m = M_m x~_m + c_m                 (B, rank * mm_dim)
        z = sum_r (q_1 * ... * q_M)[:, r]    view (B, rank, mm_dim), sum over rank
        z = power_l2(z) if normalize
        out = W_out z + b_out                (B, out_dim), no output activation

    More than two modalities: q_1 * ... * q_M chains every modality in
    sorted-name order, a rank-``rank`` core of an order M + 1 Tucker tensor
    (the published MUTAN is M = 2).

    Input: pooled (B, D_m) or tokens (B, T_m, D_m) (mean-pooled) per modality.
    Missing modality: input zeroed, so q_m = M_m b_m + c_m.

    Attributes:
      out_dim: output width.
      mm_dim: width of the projected inputs and the core's output mode; 1600 published.
      rank: R of the core; 15 published.
      normalize, dropout_rate (on z before linear_out), eps: as in ``mlb``.
    """

    out_dim: int
    mm_dim: int = 1600
    rank: int = 15
    normalize: bool = False
    dropout_rate: float = 0.0
    eps: float = 1e-8
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    block_name = "mutan"

    @nn.compact
    def __call__(self, features, modality_mask=None, *, train: bool = False) -> jax.Array:
        inputs = prepare(features, modality_mask, block="mutan")
        q = None
        for n in inputs.names:
            x = self._dense(self.mm_dim, f"linear_{n}")(inputs.pooled[n].astype(self.dtype))
            h = self._dense(self.rank * self.mm_dim, f"merge_{n}", (FUSION_IN, RANK))(x)
            q = h if q is None else q * h
        z = _sum_groups(q, self.rank, self.mm_dim, outer=True)
        if self.normalize:
            z = power_l2(z, self.eps)
        return self._output(z, train)


@register("block")
class BlockFusion(_Family):
    """BLOCK (Ben-younes et al. 2019): a block-superdiagonal tensor decomposition.

    The projected inputs are split into ``chunks`` chunks (sizes from
    :func:`get_sizes_list`); chunk c of every modality meets only chunk c of
    the others, through a small core of rank ``rank``:

        x~_m = W_m x_m + b_m                        (B, mm_dim), split into x~_{m,c} (B, s_c)
        z_c = sum_r (prod_m (M_{m,c} x~_{m,c} + c_{m,c}))[:, r]   view (B, rank, s_c), sum
        z_c = power_l2(z_c)                         if pos_norm == "before_cat" (published default)
        z = [z_1; ...; z_C], power_l2(z)            if pos_norm == "after_cat"
        out = W_out z + b_out                       (B, out_dim), no output activation

    More than two modalities: prod_m chains chunk c of every modality in
    sorted-name order, each block an order M + 1 core (the published BLOCK
    is M = 2).

    Input: pooled (B, D_m) or tokens (B, T_m, D_m) (mean-pooled) per modality.
    Missing modality: input zeroed, so its chunk factors come from b_m alone.

    Attributes:
      out_dim: output width.
      mm_dim: width of the projected inputs; 1600 published.
      chunks: number of blocks C; 20 published (mm_dim >= chunks).
      rank: rank of each block's core; 15 published.
      pos_norm: "before_cat" (each chunk) or "after_cat" (the concatenation).
      dropout_rate (on z before linear_out), eps: as in ``mlb``.
    """

    out_dim: int
    mm_dim: int = 1600
    chunks: int = 20
    rank: int = 15
    pos_norm: str = "before_cat"
    dropout_rate: float = 0.0
    eps: float = 1e-8
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    block_name = "block"

    @nn.compact
    def __call__(self, features, modality_mask=None, *, train: bool = False) -> jax.Array:
        inputs = prepare(features, modality_mask, block="block")
        if self.pos_norm not in ("before_cat", "after_cat"):
            raise FusionInputError(f"block: config pos_norm must be 'before_cat' or 'after_cat', got {self.pos_norm!r}")
        if self.chunks > self.mm_dim:
            raise FusionInputError(f"block: config chunks ({self.chunks}) must be <= mm_dim ({self.mm_dim})")
        sizes = get_sizes_list(self.mm_dim, self.chunks)
        starts = [sum(sizes[:c]) for c in range(len(sizes))]
        xs = [self._dense(self.mm_dim, f"linear_{n}")(inputs.pooled[n].astype(self.dtype)) for n in inputs.names]
        zs = []
        for c, (start, size) in enumerate(zip(starts, sizes)):
            q = None
            for n, x in zip(inputs.names, xs):
                h = self._dense(size * self.rank, f"merge_{n}_{c}", (FUSION_IN, RANK))(x[:, start:start + size])
                q = h if q is None else q * h
            z = _sum_groups(q, self.rank, size, outer=True)
            zs.append(power_l2(z, self.eps) if self.pos_norm == "before_cat" else z)
        z = jnp.concatenate(zs, axis=-1)
        if self.pos_norm == "after_cat":
            z = power_l2(z, self.eps)
        return self._output(z, train)


@register_cost("mlb")
def _mlb_cost(dims, out_dim, mm_dim: int = 1200, **config) -> Cost:
    """Projections and linear_out; the elementwise product and activations are not counted."""
    return _total([_linear(d, mm_dim) for d in dims] + [_linear(mm_dim, out_dim)])


@register_cost("mfh")
def _mfh_cost(dims, out_dim, mm_dim: int = 1200, factor: int = 2, order: int = 2, **config) -> Cost:
    return _total([_linear(d, mm_dim * factor) for d in dims] * order + [_linear(order * mm_dim, out_dim)])


@register_cost("mutan")
def _mutan_cost(dims, out_dim, mm_dim: int = 1600, rank: int = 15, **config) -> Cost:
    per = [_linear(d, mm_dim) for d in dims] + [_linear(mm_dim, rank * mm_dim)] * len(dims)
    return _total(per + [_linear(mm_dim, out_dim)])


@register_cost("block")
def _block_cost(dims, out_dim, mm_dim: int = 1600, chunks: int = 20, rank: int = 15, **config) -> Cost:
    merges = [_linear(s, s * rank) for s in get_sizes_list(mm_dim, chunks)] * len(dims)
    return _total([_linear(d, mm_dim) for d in dims] + merges + [_linear(mm_dim, out_dim)])
