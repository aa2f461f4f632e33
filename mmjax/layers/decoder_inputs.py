"""Input checks shared by the caption decoders (:mod:`mmjax.layers.decoder`)."""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from mmjax import errors

Array = jax.Array


class DecoderInputError(errors.InputError):
    """Bad decoder input: token dtype/rank, sequence longer than max_len, context shape."""


def check_tokens(tokens: Array, where: str) -> None:
    """tokens must be (B, T) integer ids."""
    if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise DecoderInputError(
            f"{where}: tokens must be (B, T) integer ids, got shape {tuple(tokens.shape)} dtype {tokens.dtype}"
        )


def check_context(context: Array, context_mask: Optional[Array], batch: int, where: str) -> None:
    """context must be (B, S, D) and context_mask, if given, (B, S)."""
    if context.ndim != 3 or context.shape[0] != batch:
        raise DecoderInputError(
            f"{where}: context must be (B={batch}, S, D), got shape {tuple(context.shape)}"
        )
    if context_mask is not None and tuple(context_mask.shape) != tuple(context.shape[:2]):
        raise DecoderInputError(
            f"{where}: context_mask must be {tuple(context.shape[:2])}, got {tuple(context_mask.shape)}"
        )


__all__ = ["DecoderInputError", "check_context", "check_tokens"]
