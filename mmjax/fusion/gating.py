"""Multiplicative gating: ``gated`` (GMU, Arevalo et al. 2017) and ``film`` (Perez et al. 2018)."""
from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.fusion.base import FusionInputError, prepare
from mmjax.fusion.cost import Cost, register_cost
from mmjax.fusion.pooling import masked_softmax
from mmjax.fusion.registry import register
from mmjax.layers import dense


@register("gated")
class GatedFusion(nn.Module):
    """Gated Multimodal Unit generalised to M modalities.

        h_m = tanh(W_m z_m + b_m)                      (B, out_dim) each
        g   = softmax_m(W_g [z_1; ...; z_M] + b_g)     (B, M, out_dim), per output unit
        z   = sum_m g_m * h_m                          (B, out_dim)

    With ``gate="sigmoid"`` and exactly two modalities this is the paper's
    bimodal GMU: g = sigmoid(W_g [z_1; z_2] + b_g), z = g * h_1 + (1 - g) * h_2
    (the modality sorted first gets g).

    Input: pooled (B, D_m) or tokens (B, T_m, D_m) per modality. Output: (B, out_dim).

    Missing modality: excluded from the gate. The softmax is renormalised over
    the present modalities; in sigmoid mode a lone present modality gets gate 1.
    An example with no modality present gets zeros.

    With ``normalize=True`` (the default) each z_m first goes through a
    LayerNorm without parameters (zero mean, unit variance over D_m): the
    encoders trained through the tanh and the gate otherwise grow their
    features (on av_digits from std 0.5-1 to 7-9 within 300 steps), which
    saturates both (pre-activations of |12|), and no gradient gets back
    through them. ``normalize=False`` is the published GMU.

    Attributes:
      out_dim: width of h_m and of the output.
      gate: "softmax" (any M >= 2) or "sigmoid" (M == 2 only).
      normalize: unit-scale the inputs (no parameters, so the tree is the same).
    """

    out_dim: int
    gate: str = "softmax"
    normalize: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features, modality_mask=None, *, train: bool = False) -> jax.Array:
        inputs = prepare(features, modality_mask, block="gated")
        names, m = inputs.names, len(inputs.names)
        if self.gate not in ("softmax", "sigmoid"):
            raise FusionInputError(f"gated: gate must be 'softmax' or 'sigmoid', got {self.gate!r}")
        if self.gate == "sigmoid" and m != 2:
            raise FusionInputError(f"gated: gate='sigmoid' needs exactly 2 modalities, got {m}: {list(names)}")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        z = [inputs.pooled[n].astype(self.dtype) for n in names]
        if self.normalize:
            z = [_unit_scale(x) for x in z]
        h = jnp.stack([jnp.tanh(dense(self.out_dim, **kw, name=f"hidden_{n}")(x)) for n, x in zip(names, z)], 1)
        zcat = jnp.concatenate(z, axis=-1)
        present = inputs.present_matrix(bool)  # (B, M)
        wide = jnp.promote_types(self.dtype, jnp.float32)  # gates in >= float32, as softmax in attention
        if self.gate == "sigmoid":
            g = jax.nn.sigmoid(dense(self.out_dim, **kw, name="gate")(zcat).astype(wide))
            both = (present[:, 0] & present[:, 1])[:, None]
            g1 = jnp.where(both, g, present[:, :1].astype(g.dtype))
            g2 = jnp.where(both, 1 - g, present[:, 1:].astype(g.dtype))
            gates = jnp.stack([g1, g2], axis=1)
        else:
            logits = dense(m * self.out_dim, **kw, name="gate")(zcat).reshape(-1, m, self.out_dim)
            gates = masked_softmax(logits.astype(wide), present[..., None], axis=1)
        return jnp.einsum("bmo,bmo->bo", gates.astype(self.dtype), h)


@register("film")
class FiLMFusion(nn.Module):
    """FiLM: the ``target`` modality is modulated by the others.

        x_c = [z_c1; z_c2; ...]                 the conditioning modalities, sorted
        z   = gamma(x_c) * (W x_b + b) + beta(x_c)
        gamma(x_c) = 1 + W_gamma x_c + b_gamma,   beta(x_c) = W_beta x_c + b_beta

    gamma is parametrised around 1. With ``identity_init=True`` (the default)
    W_gamma starts at zero, so gamma = 1 exactly at initialisation and the
    block starts as base + beta, an additive fusion; with False W_gamma is
    LeCun-normal as in FiLM's reference code, and gamma - 1 starts at the
    conditioner's scale (std 1.0 on av_digits: a sign flip on ~16% of units,
    and a gradient norm of 23 at step 50).

    With ``normalize=True`` (the default) z goes through a LayerNorm without
    parameters (zero mean, unit variance over out_dim, eps 1e-6): z is a
    product of the two encoders' projections, trained through it, and grows
    with both (on av_digits from std 1.2 at init to 3.4, max |z| 17, after
    300 steps; a gradient norm of 5.6 at step 50, 1.9 with the LayerNorm; see
    experiments/SWEEP_av_digits.md). The head's first Dense absorbs a
    LayerNorm's scale and bias, so none are added and the parameter tree is
    the same. ``normalize=False`` is the published formula.

    Input: pooled (B, D_m) or tokens (B, T_m, D_m) per modality. Output: (B, out_dim).

    Missing modality (z before the LayerNorm): a missing conditioner's slice of x_c is zeros, so with
    all conditioners missing z = (1 + b_gamma) * (W x_b + b) + b_beta. A
    missing target gives x_b = 0, so z = gamma(x_c) * b + beta(x_c): only the
    conditioners speak.

    Attributes:
      out_dim: output width.
      target: name of the modulated modality; None = the first in sorted order.
      identity_init: start W_gamma at zero (gamma = 1); same parameter tree either way.
      normalize: unit-scale the output (no parameters, so the tree is the same).
    """

    out_dim: int
    target: Optional[str] = None
    identity_init: bool = True
    normalize: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features, modality_mask=None, *, train: bool = False) -> jax.Array:
        inputs = prepare(features, modality_mask, block="film")
        target = _film_target(self.target, inputs.names)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x_b = inputs.pooled[target].astype(self.dtype)
        x_c = jnp.concatenate([inputs.pooled[n].astype(self.dtype) for n in inputs.names if n != target], -1)
        base = dense(self.out_dim, **kw, name="base")(x_b)
        gamma_init = nn.initializers.zeros_init() if self.identity_init else nn.initializers.lecun_normal()
        gamma = 1 + dense(self.out_dim, **kw, kernel_init=gamma_init, name="gamma")(x_c)
        beta = dense(self.out_dim, **kw, name="beta")(x_c)
        z = gamma * base + beta
        return _unit_scale(z) if self.normalize else z


def _unit_scale(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """(..., D) -> zero mean, unit variance over D (a LayerNorm with no scale or bias), in >= float32."""
    wide = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    mean = wide.mean(-1, keepdims=True)
    var = jnp.square(wide - mean).mean(-1, keepdims=True)
    return ((wide - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


def _film_target(target: Optional[str], names: Sequence[str]) -> str:
    if target is None:
        return names[0]
    if target not in names:
        raise FusionInputError(f"film: config target={target!r} is not among the modalities {list(names)}")
    return target


@register_cost("gated")
def _gated_cost(dims, out_dim, gate: str = "softmax", **config) -> Cost:
    """Hidden projections + gate projection; tanh/softmax/gating products not counted."""
    m, d = len(dims), sum(dims)
    g = 1 if gate == "sigmoid" else m
    return Cost(
        params=sum((x + 1) * out_dim for x in dims) + (d + 1) * g * out_dim,
        flops=2 * d * out_dim + 2 * d * g * out_dim,
    )


@register_cost("film")
def _film_cost(
    dims, out_dim, target: Union[None, int, str] = None, names: Optional[Sequence[str]] = None, **config
) -> Cost:
    """Base, gamma and beta projections; the modulation (elementwise) is not counted.

    ``target`` is None (first sorted), an index into ``dims``, or a name together
    with ``names`` (the sorted modality names).
    """
    if isinstance(target, str):
        if names is None:
            raise ValueError("film cost: target given by name needs names=[sorted modality names]")
        target = list(sorted(names)).index(target)
    t = 0 if target is None else target
    d_b = dims[t]
    d_c = sum(dims) - d_b
    return Cost(
        params=(d_b + 1) * out_dim + 2 * (d_c + 1) * out_dim,
        flops=2 * d_b * out_dim + 4 * d_c * out_dim,
    )
