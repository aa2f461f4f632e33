"""MultiBench's fusions: ``multiplicative``, ``nl_gate``, ``stack``.

Written after ``fusions/common_fusions.py`` of pliang279/MultiBench
(``MultiplicativeInteractions2Modal``, ``NLgate``, ``Stack`` / ``ConcatEarly``).
Their cost models are in :mod:`mmjax.fusion.multibench_cost`.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.fusion.base import FusionInputError, prepare
from mmjax.fusion.multibench_cost import MI_FORMS, _mi_shapes  # importing registers the cost models
from mmjax.fusion.registry import register
from mmjax.layers import dense
from mmjax.layers.transformer import layer_norm
from mmjax.sharding import FUSION_IN, FUSION_OUT, NORM, logical

Array = jax.Array


@register("multiplicative")
class MultiplicativeFusion(nn.Module):
    """Multiplicative interactions (Jayakumar et al. 2020; MultiBench ``MultiplicativeInteractions2Modal``).

    For a context x (B, d_1) and an input y (B, d_2):

        matrix:  z = y^T (x W + V) + x U + b     W (d_1, d_2, o): a hypernetwork, z (B, o)
        vector:  z = (x W + V) * y + x U + b     W, U (d_1, d_2): gating, z (B, d_2)
        scalar:  z = (x.W + V) * y + x.U + b     W, U (d_1,): a scale and a bias, z (B, d_2)

    with o = ``mi_dim`` (default ``out_dim``). More than two modalities are
    chained pairwise in ``order``: h = z_1, then h = MI_k(context=h, input=z_k)
    for k = 2..M, each link with its own weights (``link_<k-1>``). If the last
    link's width differs from ``out_dim`` a Dense ``proj`` maps it there.

    Missing modality: its features are zeros, so a missing input y leaves
    x U + b (the context's own term) and a missing context x leaves y V + b
    (matrix) or V * y + b (vector, scalar); nothing is special-cased.

    Attributes:
      out_dim: output width.
      output: "matrix", "vector" or "scalar".
      mi_dim: o, the matrix form's width; None = out_dim.
      order: the chain order of the modality names; None = sorted (MultiBench's
        ``flip=True`` is order=(second, first)).
      normalize: a LayerNorm (``norm``) over the (B, out_dim) output; False is the
        published formula. The bilinear term grows as the product of the two
        encoders' features while both train through it, as in ``tensor``.
    """

    out_dim: int
    output: str = "matrix"
    mi_dim: Optional[int] = None
    order: Optional[Sequence[str]] = None
    normalize: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features, modality_mask=None, *, train: bool = False) -> Array:
        inputs = prepare(features, modality_mask, block="multiplicative")
        if self.output not in MI_FORMS:
            raise FusionInputError(f"multiplicative: output must be one of {MI_FORMS}, got {self.output!r}")
        order = tuple(self.order) if self.order is not None else inputs.names
        if sorted(order) != list(inputs.names):
            raise FusionInputError(f"multiplicative: order={order} is not a permutation of {list(inputs.names)}")
        o = self.mi_dim or self.out_dim
        h = inputs.pooled[order[0]].astype(self.dtype)
        for k, n in enumerate(order[1:], start=1):
            y = inputs.pooled[n].astype(self.dtype)
            h = self._link(f"link_{k}", h, y, o)
        if h.shape[-1] != self.out_dim:
            h = dense(self.out_dim, dtype=self.dtype, param_dtype=self.param_dtype, name="proj")(h)
        return layer_norm(self.dtype, self.param_dtype, "norm")(h) if self.normalize else h

    def _link(self, name: str, x: Array, y: Array, o: int) -> Array:
        """One interaction: context x (B, d_1), input y (B, d_2) -> (B, o) or (B, d_2)."""
        d1, d2 = x.shape[-1], y.shape[-1]
        sw, su, sv, sb = _mi_shapes(self.output, d1, d2, o)
        fan = {"W": d1 * (d2 if self.output == "matrix" else 1), "U": d1, "V": d2 if self.output == "matrix" else 1}
        axes = {1: (FUSION_OUT,), 2: (FUSION_IN, FUSION_OUT), 3: (FUSION_IN, None, FUSION_OUT)}

        def param(key, shape, init):
            names = (NORM,) if shape == (1,) else axes[len(shape)]  # a (1,) scalar is replicated
            return self.param(f"{name}_{key}", logical(init, names), shape, self.param_dtype).astype(self.dtype)

        def normal(fan_in):
            return nn.initializers.normal(1.0 / math.sqrt(fan_in))

        w, u, b = param("W", sw, normal(fan["W"])), param("U", su, normal(fan["U"])), param("b", sb, nn.initializers.zeros)
        # V starts at 1 in the vector and scalar forms, so at init the input passes through its gate.
        v = param("V", sv, normal(fan["V"]) if self.output == "matrix" else nn.initializers.ones)
        if self.output == "matrix":
            return jnp.einsum("bn,bm,nmd->bd", x, y, w) + y @ v + x @ u + b
        if self.output == "vector":
            return (x @ w + v) * y + x @ u + b
        return (x @ w + v[0])[:, None] * y + (x @ u + b[0])[:, None]


@register("nl_gate")
class NLGateFusion(nn.Module):
    """Non-local gate (MultiBench ``NLgate``; Wang et al. 2020, "What makes training multi-modal
    classification networks hard?", section F4): the ``query`` modality's tokens are gated by the other's.

        q = x_q (B, T_q, C)                  the query modality's tokens (Dense to ``dim`` if set)
        K, V = keys / values (B, S, C)       from the gating modality (below)
        g = q + softmax(q K^T) V             per query token, no 1/sqrt(C) scale (as in NLgate)
        z = Dense(out_dim)(flatten(g))       (B, T_q * C) -> (B, out_dim); out_dim None: the flatten

    Keys and values come from the gating modality's tokens (B, S, D) by
    per-token Dense layers, or, with ``kv_tokens=S``, from its pooled vector
    (B, D) by Dense(S * C) reshaped to (C, S) for K and (S, C) for V (NLgate's
    k_linear / v_linear on a flat vector). Exactly two modalities: NLgate is
    defined for one query and one gate (three or more are refused).

    Missing modality: a missing or padded gating token is never a key; an
    example whose gating modality is missing gets g = q (the query ungated).
    Padded query tokens and a missing query modality give g = 0 there.

    Attributes:
      out_dim: output width (None: return the flattened (B, T_q * C)).
      query: name of the gated modality; None = the first in sorted order.
      dim: C; None = the query width (no query projection, as NLgate's q_linear=None).
      kv_tokens: None = keys from the gating tokens; S = keys from its pooled vector.
    """

    out_dim: Optional[int] = None
    query: Optional[str] = None
    dim: Optional[int] = None
    kv_tokens: Optional[int] = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features, modality_mask=None, *, train: bool = False) -> Array:
        inputs = prepare(features, modality_mask, block="nl_gate")
        names = inputs.names
        if len(names) != 2:
            raise FusionInputError(f"nl_gate: needs exactly 2 modalities (a query and a gate), got {list(names)}")
        qn = names[0] if self.query is None else self.query
        if qn not in names:
            raise FusionInputError(f"nl_gate: config query={qn!r} is not among the modalities {list(names)}")
        gn = names[1] if qn == names[0] else names[0]
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        q = inputs.tokens[qn].astype(self.dtype)
        c = self.dim or q.shape[-1]
        if self.dim is not None:
            q = dense(c, **kw, name="q")(q)
        if self.kv_tokens is None:
            kv = inputs.tokens[gn].astype(self.dtype)
            k, v = dense(c, **kw, name="k")(kv), dense(c, **kw, name="v")(kv)
            key_mask = inputs.token_mask[gn]
        else:
            s, g = self.kv_tokens, inputs.pooled[gn].astype(self.dtype)
            k = dense(s * c, **kw, name="k")(g).reshape(-1, c, s).transpose(0, 2, 1)
            v = dense(s * c, **kw, name="v")(g).reshape(-1, s, c)
            key_mask = jnp.broadcast_to(inputs.present[gn][:, None], (g.shape[0], s))
        logits = jnp.einsum("btc,bsc->bts", q, k).astype(jnp.promote_types(self.dtype, jnp.float32))
        has = key_mask.any(axis=-1)
        allowed = (key_mask | ~has[:, None])[:, None, :]
        w = jax.nn.softmax(jnp.where(allowed, logits, jnp.finfo(logits.dtype).min), axis=-1)
        att = jnp.einsum("bts,bsc->btc", w.astype(self.dtype), v)
        gated = q + jnp.where(has[:, None, None], att, 0)
        gated = jnp.where(inputs.token_mask[qn][..., None], gated, 0)
        flat = gated.reshape(gated.shape[0], -1)
        return flat if self.out_dim is None else dense(self.out_dim, **kw, name="out")(flat)


@register("stack")
class StackFusion(nn.Module):
    """Early fusion of aligned sequences (MultiBench ``ConcatEarly`` / ``Stack``).

    ``inputs="tokens"``: every modality is a sequence (B, T, D_m) of the same
    length T (time-aligned); step t's features are concatenated,
    s_t = [x_1,t; ...; x_M,t] (B, T, sum_m D_m) (ConcatEarly, torch.cat on
    dim 2; MultiBench's Stack when every D_m is 1). ``inputs="pooled"``: the
    pooled vectors (B, D) of equal width D are stacked position by position,
    (B, D, M) (MultiBench's Stack on flat features). The stacked sequence is
    flattened in row-major order and a Dense maps it to (B, out_dim) (None:
    the flattened stack itself). Lengths (or widths) that differ are refused.

    Missing modality: its slot is zeros at every step; a padded step is zeros
    in that modality's slot (the Dense then sees only what is present, plus its bias).

    Attributes:
      out_dim: output width, or None for the flattened stack.
      inputs: "tokens" or "pooled".
    """

    out_dim: Optional[int] = None
    inputs: str = "tokens"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features, modality_mask=None, *, train: bool = False) -> Array:
        inputs = prepare(features, modality_mask, block="stack")
        names = inputs.names
        if self.inputs == "tokens":
            lengths = {n: inputs.tokens[n].shape[1] for n in names}
            if len(set(lengths.values())) != 1:
                raise FusionInputError(f"stack: aligned sequences need equal lengths, got {lengths}")
            s = jnp.concatenate([inputs.tokens[n].astype(self.dtype) for n in names], axis=-1)
        elif self.inputs == "pooled":
            dims = inputs.dims()
            if len(set(dims.values())) != 1:
                raise FusionInputError(f"stack: inputs='pooled' needs equal widths, got {dims}")
            s = jnp.stack([inputs.pooled[n].astype(self.dtype) for n in names], axis=-1)
        else:
            raise FusionInputError(f"stack: inputs must be 'tokens' or 'pooled', got {self.inputs!r}")
        flat = s.reshape(s.shape[0], -1)
        if self.out_dim is None:
            return flat
        return dense(self.out_dim, dtype=self.dtype, param_dtype=self.param_dtype, name="proj")(flat)
