"""A Dense layer whose kernel and bias carry logical axis names."""
from __future__ import annotations

from typing import Any, Tuple

import flax.linen as nn
import jax.numpy as jnp

from mmjax.sharding import FUSION_IN, FUSION_OUT, logical


def dense(
    features: int,
    *,
    axes: Tuple[str, str] = (FUSION_IN, FUSION_OUT),
    use_bias: bool = True,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
    kernel_init=nn.initializers.lecun_normal(),
    name: str | None = None,
) -> nn.Dense:
    """``nn.Dense`` with logical partitioning: kernel ``axes``, bias ``axes[1]``."""
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=logical(kernel_init, axes),
        bias_init=logical(nn.initializers.zeros_init(), (axes[1],)),
        name=name,
    )
