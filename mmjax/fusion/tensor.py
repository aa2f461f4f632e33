"""Tensor fusion: ``tensor`` (TFN, Zadeh et al. 2017) and ``low_rank`` (LMF, Liu et al. 2018)."""
from __future__ import annotations

import itertools
import math
from typing import Any, List, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.fusion.base import FusionInputError, prepare
from mmjax.fusion.cost import Cost, register_cost
from mmjax.fusion.registry import register
from mmjax.layers import dense
from mmjax.layers.transformer import layer_norm
from mmjax.sharding import FUSION_IN, FUSION_OUT, RANK, logical


def _augment(h: jax.Array) -> jax.Array:
    """(B, d) -> (B, d + 1) = [1; h]."""
    return jnp.concatenate([jnp.ones(h.shape[:-1] + (1,), h.dtype), h], axis=-1)


def _outer(hs: Sequence[jax.Array]) -> jax.Array:
    """[(B, a_1), ..., (B, a_k)] -> (B, a_1, ..., a_k) by broadcasting (an elementwise
    fusion; as an einsum XLA lowers it to a batched dot with a contraction of size 1)."""
    k = len(hs)
    out = hs[0].reshape(hs[0].shape + (1,) * (k - 1))
    for i, h in enumerate(hs[1:], start=1):
        out = out * h.reshape(h.shape[:1] + (1,) * i + h.shape[1:] + (1,) * (k - 1 - i))
    return out


def tfn_plan(aug_dims: Sequence[int], out_dim: int) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """Contraction order for z = W vec(outer_m a_m), a_m of length aug_dims[m].

    The plan is (S, rest): first the outer product of the modalities in S
    (per example prod_{m in S} a_m numbers), contracted with W in one einsum
    into a (prod_{m in rest} a_m, out_dim) tensor, which then absorbs the
    modalities in ``rest`` one at a time (largest first, so each step shrinks
    the tensor most). S = all modalities is "materialise the outer product";
    |S| = 1 is "contract mode by mode". Among all non-empty S we take the one
    with the smallest largest intermediate, then the fewest FLOPs; e.g. for
    dims (33, 33, 33) and out_dim 64, S has two modalities: intermediates of
    1089 and 33 * 64 numbers per example instead of 35937 (full outer
    product) or 1089 * 64 (pure mode by mode).
    """
    m = len(aug_dims)
    best = None
    for k in range(1, m + 1):
        for s in itertools.combinations(range(m), k):
            rest = tuple(sorted((i for i in range(m) if i not in s), key=lambda i: -aug_dims[i]))
            peak = max(math.prod(aug_dims[i] for i in s) if k > 1 else 0,
                       math.prod(aug_dims[i] for i in rest) * out_dim)
            key = (peak, _tfn_flops(aug_dims, out_dim, s, rest))
            if best is None or key < best[0]:
                best = (key, (s, rest))
    return best[1]


def _tfn_flops(aug_dims, out_dim, s, rest) -> int:
    """Einsum FLOPs of a plan (outer-product multiplies excluded)."""
    total = math.prod(aug_dims)
    flops = 2 * total * out_dim
    size = math.prod(aug_dims[i] for i in rest)
    for i in rest:
        flops += 2 * size * out_dim
        size //= aug_dims[i]
    return flops


@register("tensor")
class TensorFusion(nn.Module):
    """Tensor Fusion Network: z = W vec(⊗_m [1; h_m]) + b.

    h_m is modality m's pooled features, or ``W_m z_m + b_m`` of width
    ``pre_dim`` if set (TFN works with small per-modality dims: the weight
    grows as their product). W is stored as a tensor of shape
    (d_1+1, ..., d_M+1, out_dim) and contracted without necessarily forming
    the whole outer product; see :func:`tfn_plan` for the order.

    Cost per example, with a_m = d_m + 1 and P = prod_m a_m:
      parameters: P * out_dim + out_dim (+ sum_m (D_m + 1) * pre_dim);
      FLOPs: 2 * P * out_dim for the big contraction, plus
      2 * out_dim * (prod_{rest} a + prod_{rest minus first} a + ...) for the
      mode-by-mode tail (+ 2 * sum_m D_m * pre_dim).
      Peak activation: B * max(prod_{S} a, prod_{rest} a * out_dim).

    Input: pooled (B, D_m) or tokens (B, T_m, D_m) per modality. Output: (B, out_dim).

    Missing modality: h_m = 0 (also after ``pre_dim``), so [1; h_m] = [1; 0]
    and every term involving that modality vanishes: the output is what the
    sub-tensor of the present modalities gives (the unimodal and cross terms
    of those alone, plus the constant term).

    Normalisation (``normalize=True``, the default): a LayerNorm over the
    (B, out_dim) output, ``norm``. The product terms h_a h_b ... grow as the
    product of the encoders' feature scales, which move during training; on
    av_digits the un-normalised output went from std 0.5 at init to 4.5 after
    300 steps with a gradient norm of 30-40 at step 50 (see
    experiments/SWEEP_av_digits.md, "Why blocks failed and what changed").
    ``normalize=False`` is the paper's formula (as in MultiBench / the
    PyTorch reference).

    Attributes:
      out_dim: output width.
      pre_dim: project each modality to this width first (None: use as is).
      normalize: LayerNorm the output (True) or return W vec(...) + b as is.
    """

    out_dim: int
    pre_dim: Optional[int] = None
    normalize: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features, modality_mask=None, *, train: bool = False) -> jax.Array:
        inputs = prepare(features, modality_mask, block="tensor")
        names = inputs.names
        if len(names) > 20:
            raise FusionInputError(f"tensor: at most 20 modalities supported, got {len(names)}")
        hs: List[jax.Array] = []
        for n in names:
            h = inputs.pooled[n].astype(self.dtype)
            if self.pre_dim is not None:
                h = dense(self.pre_dim, dtype=self.dtype, param_dtype=self.param_dtype, name=f"pre_{n}")(h)
                h = jnp.where(inputs.present[n][:, None], h, 0)
            hs.append(_augment(h))
        aug = [h.shape[-1] for h in hs]
        # One logical name may appear once per array: the first mode carries
        # FUSION_IN, the other modes are replicated.
        axes = (FUSION_IN,) + (None,) * (len(aug) - 1) + (FUSION_OUT,)
        init = nn.initializers.variance_scaling(
            1.0, "fan_in", "truncated_normal", in_axis=tuple(range(len(aug))), out_axis=-1
        )
        w = self.param("kernel", logical(init, axes), (*aug, self.out_dim), self.param_dtype)
        b = self.param("bias", logical(nn.initializers.zeros_init(), (FUSION_OUT,)), (self.out_dim,),
                       self.param_dtype)
        w = w.astype(self.dtype)

        s, rest = tfn_plan(aug, self.out_dim)
        letter = [chr(ord("a") + i) for i in range(len(aug))]
        cur = [i for i in range(len(aug)) if i not in s]
        # The big contraction as one 2-D GEMM (B, prod_S a) @ (prod_S a, prod_rest a * out):
        # written as an einsum over the modes, XLA:CPU lays the kernel's gradient out
        # transposed and spends longer copying it back than on the GEMM itself.
        outer = _outer([hs[i] for i in s]).reshape(hs[0].shape[0], -1)
        w2 = jnp.transpose(w, (*s, *cur, len(aug))).reshape(outer.shape[-1], -1)
        t = (outer @ w2).reshape(outer.shape[0], *(aug[i] for i in cur), self.out_dim)
        for i in rest:
            src = "".join(letter[j] for j in cur)
            cur.remove(i)
            dst = "".join(letter[j] for j in cur)
            t = jnp.einsum(f"y{src}z,y{letter[i]}->y{dst}z", t, hs[i])
        return _maybe_norm(self, t + b.astype(self.dtype))


def _maybe_norm(module: nn.Module, z: jax.Array) -> jax.Array:
    """LayerNorm of the (B, out_dim) fused vector when ``module.normalize``, else ``z``."""
    if not module.normalize:
        return z
    return layer_norm(module.dtype, module.param_dtype, "norm")(z)


@register_cost("tensor")
def _tensor_cost(dims, out_dim, pre_dim: Optional[int] = None, normalize: bool = True, **config) -> Cost:
    """Exact params; FLOPs of the einsums of :func:`tfn_plan` (outer-product multiplies and
    the LayerNorm not counted)."""
    params, flops = out_dim + (2 * out_dim if normalize else 0), 0
    if pre_dim is not None:
        params += sum((d + 1) * pre_dim for d in dims)
        flops += sum(2 * d * pre_dim for d in dims)
        dims = [pre_dim] * len(dims)
    aug = [d + 1 for d in dims]
    params += math.prod(aug) * out_dim
    flops += _tfn_flops(aug, out_dim, *tfn_plan(aug, out_dim))
    return Cost(params=params, flops=flops)


@register("low_rank")
class LowRankFusion(nn.Module):
    """Low-rank Multimodal Fusion: z = sum_{i=1..r} w_i prod_m (W_m^(i) [1; z_m]) + b.

    Modality m's factor W_m^(i) [1; z_m] = c_m^(i) + z_m U_m^(i) is stored as
    two parameters: ``factor_<m>`` U_m of shape (d_m, r, out_dim) and
    ``factor_bias_<m>`` c_m of shape (r, out_dim). The paper's
    (r, d_m + 1, out_dim) factor is ``concat([c_m[:, None], U_m.transpose(1, 0,
    2)], 1)``; this layout makes each modality's r terms one (B, d_m) @ (d_m,
    r * out_dim) GEMM without a column of ones (an odd contraction size that
    slows the GEMM) or a transposed weight gradient. The r rank-one terms are
    mixed by the learned ``fusion_weights`` (1, r) as in the paper, plus a bias.
    Parameters r * sum_m (d_m + 1) * out_dim + r + out_dim: linear in M,
    where ``tensor`` is exponential.

    Input: pooled (B, D_m) or tokens (B, T_m, D_m) per modality. Output: (B, out_dim).

    Missing modality: its factor sees [1; 0], i.e. contributes only its bias
    c_m^(i) to the product (the low-rank analogue of TFN's constant slice).

    Initialisation (``factor_init``): "xavier" (default) draws U_m and c_m as
    MultiBench's LMF does, Xavier-normal over the paper's (r, d_m + 1,
    out_dim) factor (PyTorch fans: fan_in = (d_m + 1) * out_dim, fan_out =
    r * out_dim; std 0.0196 at d = 64, r = 16, out = 64); "lecun" is the
    earlier LeCun truncated normal with fan-in d_m + 1 (std 0.124 there).
    Normalisation (``normalize=True``, the default): a LayerNorm over the
    (B, out_dim) output, ``norm``, as in :class:`TensorFusion`: the product
    of M factors scales as the M-th power of the feature scale.
    ``normalize=False`` is the paper's formula.

    Attributes:
      out_dim: output width.
      rank: number of rank-one terms r.
      factor_init: "xavier" or "lecun" (see above).
      normalize: LayerNorm the output (True) or return the sum as is.
    """

    out_dim: int
    rank: int = 4
    factor_init: str = "xavier"
    normalize: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features, modality_mask=None, *, train: bool = False) -> jax.Array:
        inputs = prepare(features, modality_mask, block="low_rank")
        if self.rank < 1:
            raise FusionInputError(f"low_rank: config rank must be >= 1, got {self.rank}")
        if self.factor_init not in FACTOR_INITS:
            raise FusionInputError(f"low_rank: factor_init must be one of {FACTOR_INITS}, got {self.factor_init!r}")
        r, o = self.rank, self.out_dim
        w = self.param("fusion_weights", logical(nn.initializers.xavier_normal(), (None, RANK)),
                       (1, r), self.param_dtype)
        b = self.param("fusion_bias", logical(nn.initializers.zeros_init(), (FUSION_OUT,)),
                       (o,), self.param_dtype)
        prod = None
        for i, n in enumerate(inputs.names):
            z = inputs.pooled[n].astype(self.dtype)
            d = z.shape[-1]
            # U and c are slices of one (r, d_m + 1, out) factor: one init for both.
            init = _factor_init(self.factor_init, d, r, o)
            u = self.param(f"factor_{n}", logical(init, (FUSION_IN, RANK, FUSION_OUT)),
                           (d, r, o), self.param_dtype).astype(self.dtype)
            c = self.param(f"factor_bias_{n}", logical(init, (RANK, FUSION_OUT)),
                           (r, o), self.param_dtype).astype(self.dtype)
            if i == len(inputs.names) - 1:
                # The rank mix sum_i w_i (...) folded into the last factor: the mix is then a
                # plain sum over r (as a multiply-and-sum or a contraction over the middle
                # axis of (B, r, out) it is 1.2-1.3x slower at batch 512).
                wr = w.reshape(r).astype(self.dtype)
                u, c = u * wr[None, :, None], c * wr[:, None]
            term = z @ u.reshape(d, r * o) + c.reshape(r * o)
            prod = term if prod is None else prod * term
        return _maybe_norm(self, prod.reshape(-1, r, o).sum(axis=1) + b.astype(self.dtype))


# lecun_normal's stddev correction for a normal truncated at two standard deviations.
_TRUNCATED_STD = 0.87962566103423978
FACTOR_INITS = ("xavier", "lecun")


def _factor_init(kind: str, d: int, rank: int, out_dim: int):
    """Initialiser of modality factors of input width d, whatever the stored array's shape.

    "xavier": normal with std sqrt(2 / ((d + 1) * out + rank * out)), PyTorch's
    xavier_normal_ on the (rank, d + 1, out) factor as MultiBench's LMF uses it.
    "lecun": truncated normal with variance 1 / (d + 1).
    """
    if kind == "xavier":
        return nn.initializers.normal(math.sqrt(2.0 / ((d + 1) * out_dim + rank * out_dim)))
    return nn.initializers.truncated_normal(1.0 / (math.sqrt(d + 1) * _TRUNCATED_STD))


@register_cost("low_rank")
def _low_rank_cost(dims, out_dim, rank: int = 4, normalize: bool = True, **config) -> Cost:
    """Factor einsums and the rank mix; the M-1 elementwise products and the LayerNorm are not counted."""
    return Cost(
        params=rank * sum(d + 1 for d in dims) * out_dim + rank + out_dim + (2 * out_dim if normalize else 0),
        flops=sum(2 * rank * (d + 1) * out_dim for d in dims) + 2 * rank * out_dim,
    )
