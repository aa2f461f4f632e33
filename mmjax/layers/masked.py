"""The one masked mean: pooling over real tokens, safe for whatever padded positions hold."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """x (B, T, D), mask (B, T) bool -> (B, D) mean over the True positions; zeros for a row with none.

    Padded positions are selected away (``jnp.where``), not multiplied by 0, so NaN or Inf there
    reaches neither the value nor the gradient.
    """
    count = jnp.maximum(mask.sum(axis=1), 1).astype(x.dtype)[:, None]
    return jnp.where(mask[..., None], x, 0).sum(axis=1) / count
