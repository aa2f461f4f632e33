"""Decision-level fusion: ``late`` (per-modality heads whose logits are combined)."""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.fusion.base import FusionInputError, prepare
from mmjax.fusion.cost import Cost, register_cost
from mmjax.fusion.pooling import masked_softmax, modality_logits
from mmjax.fusion.registry import register
from mmjax.layers import dense
from mmjax.sharding import CLASSES, FUSION_IN, FUSION_OUT


@register("late")
class LateFusion(nn.Module):
    """logits = sum_m w_m head_m(z_m): one classifier head per modality, then a vote.

    head_m is Dense(out_dim), or Dense(hidden_dim) -> GELU (-> Dropout) ->
    Dense(out_dim) if ``hidden_dim`` is set. ``combine="mean"`` averages the
    heads' logits (w_m = 1 / M); ``combine="learned"`` uses w = softmax(a)
    with learned a (M,).

    The output (B, out_dim) is already logits, so a classifier using this
    block can put an identity (or another Dense) on top.

    Input: pooled (B, D_m) or tokens (B, T_m, D_m) per modality. Output: (B, out_dim).

    Missing modality: its head is excluded and the weights are renormalised
    over the present modalities (mean over present ones; softmax over present
    ones). An example with no modality present gets zero logits.

    Attributes:
      out_dim: number of classes.
      hidden_dim: hidden width of each head's MLP; None = a single Dense.
      combine: "mean" or "learned".
      dropout_rate: dropout after the hidden activation (train only).
    """

    # Decision-level fusion: a classifier config naming this block (``model.fusion="late"``) gets
    # one head per modality whose logits this block combines, out_dim = the number of classes
    # by default (mmjax.models.fusion_choice reads this declaration).
    fuses_logits = True

    out_dim: int
    hidden_dim: Optional[int] = None
    combine: str = "mean"
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features, modality_mask=None, *, train: bool = False) -> jax.Array:
        inputs = prepare(features, modality_mask, block="late")
        if self.combine not in ("mean", "learned"):
            raise FusionInputError(f"late: config combine must be 'mean' or 'learned', got {self.combine!r}")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        logits = []
        for n in inputs.names:
            h = inputs.pooled[n].astype(self.dtype)
            if self.hidden_dim is not None:
                h = dense(self.hidden_dim, axes=(FUSION_IN, FUSION_OUT), **kw, name=f"hidden_{n}")(h)
                h = nn.Dropout(self.dropout_rate)(nn.gelu(h), deterministic=not train)
                h = dense(self.out_dim, axes=(FUSION_OUT, CLASSES), **kw, name=f"head_{n}")(h)
            else:
                h = dense(self.out_dim, axes=(FUSION_IN, CLASSES), **kw, name=f"head_{n}")(h)
            logits.append(h)
        logits = jnp.stack(logits, axis=1)  # (B, M, C)
        present = inputs.present_matrix(bool)
        if self.combine == "learned":
            a = modality_logits(self, len(inputs.names))
            w = masked_softmax(jnp.broadcast_to(a, present.shape), present, axis=1)
        else:
            p = present.astype(jnp.promote_types(self.dtype, jnp.float32))
            w = p / jnp.maximum(p.sum(axis=1, keepdims=True), 1.0)
        return jnp.einsum("bm,bmc->bc", w.astype(self.dtype), logits)


@register_cost("late")
def _late_cost(dims, out_dim, hidden_dim: Optional[int] = None, combine: str = "mean", **config) -> Cost:
    """Heads plus the M-way weighted sum of logits; activations not counted."""
    m = len(dims)
    if hidden_dim is None:
        params = sum((d + 1) * out_dim for d in dims)
        flops = sum(2 * d * out_dim for d in dims)
    else:
        params = sum((d + 1) * hidden_dim + (hidden_dim + 1) * out_dim for d in dims)
        flops = sum(2 * d * hidden_dim + 2 * hidden_dim * out_dim for d in dims)
    params += m if combine == "learned" else 0
    return Cost(params=params, flops=flops + 2 * m * out_dim)
