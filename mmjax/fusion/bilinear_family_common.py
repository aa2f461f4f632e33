"""What the bilinear family (``mlb``, ``mfh``, ``mutan``, ``block``, ``mcb``) shares: activations,
the power + L2 normalisation, chunk sizes, group sums, the dense/output plumbing and cost helpers."""
from __future__ import annotations

from typing import Callable, List, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.fusion.base import FusionInputError
from mmjax.fusion.bilinear import l2_normalize, signed_sqrt
from mmjax.fusion.cost import Cost
from mmjax.layers import dense
from mmjax.sharding import FUSION_IN, FUSION_OUT

ACTIVATIONS = {"relu": nn.relu, "tanh": jnp.tanh, "sigmoid": nn.sigmoid}


def activation(name: Optional[str], block: str, key: str) -> Callable:
    """``"relu" | "tanh" | "sigmoid" | None`` (identity) -> the function."""
    if name is None:
        return lambda x: x
    if name not in ACTIVATIONS:
        raise FusionInputError(f"{block}: config {key} must be one of {sorted(ACTIVATIONS)} or None, got {name!r}")
    return ACTIVATIONS[name]


def power_l2(z: jax.Array, eps: float) -> jax.Array:
    """The published normalisation sqrt(relu(z)) - sqrt(relu(-z)), then L2, with a
    finite slope at 0 (see :func:`mmjax.fusion.bilinear.signed_sqrt`); in >= float32."""
    dtype = z.dtype
    z = z.astype(jnp.promote_types(dtype, jnp.float32))
    return l2_normalize(signed_sqrt(z, eps), eps).astype(dtype)


def get_sizes_list(dim: int, chunks: int) -> List[int]:
    """block.bootstrap's chunk sizes: ``chunks`` sizes of ceil(dim / chunks) summing to dim."""
    split = (dim + chunks - 1) // chunks
    sizes = [split] * chunks
    sizes[-1] -= sum(sizes) - dim
    # A last size <= 0 is evened out (dim 6, chunks 4: [2, 2, 2, 0] -> [2, 2, 1, 1]); the
    # published code does this for < 0 only and would build an empty chunk for 0.
    if sizes[-1] <= 0:
        n_miss = sizes[-2] - sizes[-1]
        sizes[-1] = sizes[-2]
        for j in range(n_miss):
            sizes[-j - 1] -= 1
    return sizes


def _sum_groups(z: jax.Array, groups: int, size: int, outer: bool) -> jax.Array:
    """(B, groups * size) -> (B, size): outer=True sums view (B, groups, size) over
    groups (MUTAN/BLOCK's rank sum); outer=False sums view (B, size, groups) (MFB's pooling)."""
    if outer:
        return z.reshape(z.shape[0], groups, size).sum(axis=1)
    return z.reshape(z.shape[0], size, groups).sum(axis=-1)


class _Family(nn.Module):
    """Shared plumbing: dense layers and the output stage."""

    def _dense(self, features: int, name: str, axes=(FUSION_IN, FUSION_OUT)) -> nn.Dense:
        return dense(features, axes=axes, dtype=self.dtype, param_dtype=self.param_dtype, name=name)

    def _output(self, z: jax.Array, train: bool, act: Optional[str] = None) -> jax.Array:
        z = nn.Dropout(self.dropout_rate)(z, deterministic=not train)
        z = self._dense(self.out_dim, "linear_out")(z)
        return activation(act, self.block_name, "activ_output")(z)


def _linear(d_in: int, d_out: int) -> Cost:
    return Cost(params=(d_in + 1) * d_out, flops=2 * d_in * d_out)


def _total(costs) -> Cost:
    costs = list(costs)
    return Cost(params=sum(c.params for c in costs), flops=sum(c.flops for c in costs))
