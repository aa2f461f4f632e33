"""Early fusion by concatenation, with an optional linear projection."""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.fusion.base import prepare
from mmjax.fusion.cost import Cost, register_cost
from mmjax.fusion.registry import register
from mmjax.layers import dense


@register("concat")
class ConcatFusion(nn.Module):
    """z = [z_1; ...; z_M] (modalities in sorted-name order), then W z + b if ``out_dim``.

    Missing modality: its slot is zeros (the projection then sees only the
    present modalities' contributions plus the bias).

    Attributes:
      out_dim: project the (B, sum d_m) concatenation to (B, out_dim); None keeps it.
    """

    out_dim: Optional[int] = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features, modality_mask=None, *, train: bool = False) -> jax.Array:
        inputs = prepare(features, modality_mask, block="concat")
        z = jnp.concatenate([inputs.pooled[n].astype(self.dtype) for n in inputs.names], axis=-1)
        if self.out_dim is None:
            return z
        return dense(self.out_dim, dtype=self.dtype, param_dtype=self.param_dtype, name="proj")(z)


@register_cost("concat")
def _concat_cost(dims, out_dim, **config) -> Cost:
    d = sum(dims)
    if out_dim is None:
        return Cost(params=0, flops=0)
    return Cost(params=(d + 1) * out_dim, flops=2 * d * out_dim)
