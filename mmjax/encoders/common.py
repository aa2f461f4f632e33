"""Pieces shared by the image, text, audio and video encoders."""
from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax import errors
from mmjax.layers.dense import dense
from mmjax.layers.masked import masked_mean  # noqa: F401 (the encoders' pooling)
from mmjax.layers.transformer import layer_norm
from mmjax.sharding import CONV_IN, CONV_OUT, EMBED, LENGTH, logical

Array = jax.Array


class EncoderInputError(errors.InputError):
    """An encoder got inputs of the wrong rank, shape, dtype or a bad config."""


def check_rank(name: str, x: Array, rank: int, layout: str) -> None:
    if x.ndim != rank:
        raise EncoderInputError(f"{name} encoder: expected {layout} inputs, got shape {tuple(x.shape)}")


def check_mask(name: str, mask: Optional[Array], shape: Tuple[int, ...], what: str) -> Optional[Array]:
    """Validates an optional padding mask of ``shape`` and returns it as bool."""
    if mask is None:
        return None
    if tuple(mask.shape) != tuple(shape):
        raise EncoderInputError(
            f"{name} encoder: mask must be {what} of shape {tuple(shape)}, got {tuple(mask.shape)}"
        )
    return mask.astype(bool)


def no_mask(name: str, mask: Optional[Array]) -> None:
    if mask is not None:
        raise EncoderInputError(
            f"{name} encoder: images have no padding, so mask must be None (got shape {tuple(mask.shape)})"
        )


def conv(
    features: int,
    kernel: Sequence[int],
    *,
    strides: Sequence[int] | int = 1,
    padding: Any = "SAME",
    use_bias: bool = True,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
    kernel_init=nn.initializers.lecun_normal(),
    name: Optional[str] = None,
) -> nn.Conv:
    """``nn.Conv`` whose kernel is annotated (spatial..., CONV_IN, CONV_OUT)."""
    kernel = tuple(kernel)
    if isinstance(strides, int):
        strides = (strides,) * len(kernel)
    return nn.Conv(
        features,
        kernel,
        strides=tuple(strides),
        padding=padding,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=logical(kernel_init, (None,) * len(kernel) + (CONV_IN, CONV_OUT)),
        bias_init=logical(nn.initializers.zeros_init(), (CONV_OUT,)),
        name=name,
    )


def block_max_pool(x: Array, window: Sequence[int]) -> Array:
    """Max pooling whose stride is its window, with "SAME" padding:
    (B, *S, C) -> (B, *ceil(S / window), C).

    The values of ``nn.max_pool(x, window, strides=window, padding="SAME")``,
    computed as a reshape and a max over the window axes. The gradient then is
    elementwise (ties share it); reduce_window's select-and-scatter gradient
    becomes, on XLA:CPU, a scatter over index tensors (the av_digits train
    step is 1.3x faster without it).
    """
    spatial = x.shape[1:-1]
    if len(window) != len(spatial):
        raise ValueError(f"block_max_pool: window {tuple(window)} for {len(spatial)} spatial dims {spatial}")
    pads, shape = [(0, 0)], [x.shape[0]]
    for n, w in zip(spatial, window):
        out = -(-n // w)
        total = out * w - n  # XLA's SAME rule: the smaller half before, the rest after
        pads.append((total // 2, total - total // 2))
        shape += [out, w]
    pads.append((0, 0))
    shape.append(x.shape[-1])
    if any(p != (0, 0) for p in pads):
        x = jnp.pad(x, pads, constant_values=-jnp.inf)
    return x.reshape(shape).max(axis=tuple(range(2, 2 * len(window) + 1, 2)))


# LayerNorm over channels only: per position, so padded positions never leak into real ones
# (unlike BatchNorm/GroupNorm statistics).
channel_norm = layer_norm


def embedding_param(module: nn.Module, name: str, shape: Tuple[int, ...], axes: Sequence[str], dtype: Any):
    """A learned embedding table, N(0, 0.02) like BERT/ViT."""
    return module.param(name, logical(nn.initializers.normal(0.02), tuple(axes)), shape, dtype)


def sliced_positions(module: nn.Module, name: str, length: int, max_length: int, dim: int,
                     param_dtype: Any, what: str, encoder: str, option: str) -> Array:
    """The first ``length`` rows of a (max_length, dim) learned table.

    Sliced rather than sized to the input so that appending padding changes
    no parameter shape and no real token's embedding.
    """
    if length > max_length:
        raise EncoderInputError(
            f"{encoder} encoder: {length} {what} exceed the configured maximum {max_length} "
            f"(raise the {option} option)"
        )
    table = embedding_param(module, name, (max_length, dim), (LENGTH, EMBED), param_dtype)
    return table[:length]


def downsample_mask(mask: Array, factor: int, length: int) -> Array:
    """(B, L) bool -> (B, length): a coarse position is real if any of its
    ``factor`` fine positions is (the tail is padded with False)."""
    pad = length * factor - mask.shape[1]
    if pad < 0:
        mask = mask[:, : length * factor]
    elif pad:
        mask = jnp.pad(mask, ((0, 0), (0, pad)))
    return mask.reshape(mask.shape[0], length, factor).any(-1)


def cls_token(module: nn.Module, dim: int, param_dtype: Any, name: str = "cls") -> Array:
    return module.param(name, logical(nn.initializers.zeros_init(), (EMBED,)), (dim,), param_dtype)


def flatten_pool(name: str, module: Any, flat: Array) -> Array:
    """(B, N) flattened feature map -> (B, out_dim) through a Dense layer named "pool"."""
    if module.pool != "flatten":
        raise EncoderInputError(f"{name}: pool must be 'mean' or 'flatten', got {module.pool!r}")
    if module.out_dim is None:
        raise EncoderInputError(f"{name}: pool='flatten' needs out_dim (the pooled width)")
    return dense(module.out_dim, axes=(CONV_OUT, EMBED), dtype=module.dtype, param_dtype=module.param_dtype,
                 name="pool")(flat)
