"""What every fusion block shares: input validation and mask handling.

Every block is called as ``block(features, modality_mask=None, *, train=False)``
and starts with ``inputs = prepare(features, modality_mask, block=...)``, which

* accepts per modality a pooled array (B, D_m), a token array (B, T_m, D_m)
  or an :class:`mmjax.types.Encoded`;
* checks ranks, batch sizes and mask shapes at trace time, so bad input fails
  with a message naming the modality before anything is compiled;
* orders modalities by name (dict order does not survive ``jax.tree`` round
  trips, so sorted order is the only stable one);
* zeroes missing modalities and padded tokens with ``jnp.where`` (not a
  multiply), so NaN/Inf garbage in a masked slot cannot leak into any output.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp

from mmjax import errors
from mmjax.layers.masked import masked_mean
from mmjax.types import Encoded

Array = jax.Array


class FusionInputError(errors.InputError):
    """Bad input to a fusion block: wrong rank, batch size, mask or modality set."""


@dataclasses.dataclass(frozen=True)
class FusionInputs:
    """Validated, sanitised fusion inputs (modalities in sorted name order).

    Attributes:
      names: modality names, sorted.
      pooled: name -> (B, D_m), zero where the modality is missing.
      tokens: name -> (B, T_m, D_m), zero at padding and where missing.
      token_mask: name -> (B, T_m) bool, False at padding and where missing.
      present: name -> (B,) bool, the modality mask.
      batch_size: B.
    """

    names: Tuple[str, ...]
    pooled: Dict[str, Array]
    tokens: Dict[str, Array]
    token_mask: Dict[str, Array]
    present: Dict[str, Array]
    batch_size: int

    def dims(self) -> Dict[str, int]:
        return {n: self.pooled[n].shape[-1] for n in self.names}

    def present_matrix(self, dtype: Any = jnp.float32) -> Array:
        """(B, M) presence as numbers, modalities in ``names`` order."""
        return jnp.stack([self.present[n] for n in self.names], axis=1).astype(dtype)


def _as_parts(name: str, value: Any, block: str) -> Tuple[Optional[Array], Array, Array]:
    """-> (pooled or None, tokens (B,T,D), token mask (B,T))."""
    if isinstance(value, Encoded):
        pooled, tokens, mask = value.pooled, value.tokens, value.mask
        if pooled.ndim != 2 or tokens.ndim != 3 or mask.shape != tokens.shape[:2]:
            raise FusionInputError(
                f"{block}: modality {name!r}: Encoded needs pooled (B, D), tokens (B, T, D) "
                f"and mask (B, T); got {pooled.shape}, {tokens.shape}, {mask.shape}"
            )
        return pooled, tokens, mask.astype(bool)
    if not hasattr(value, "ndim") or not hasattr(value, "shape"):
        raise FusionInputError(
            f"{block}: modality {name!r}: expected an array or Encoded, got {type(value).__name__}"
        )
    if not jnp.issubdtype(value.dtype, jnp.floating):
        raise FusionInputError(
            f"{block}: modality {name!r}: features must be floating point, got {value.dtype} "
            "(integer inputs such as token ids go through an encoder first)"
        )
    if value.ndim in (2, 3) and value.shape[-1] == 0:
        raise FusionInputError(f"{block}: modality {name!r} has features of width 0 {tuple(value.shape)}")
    if value.ndim == 2:
        return value, value[:, None, :], jnp.ones(value.shape[:1] + (1,), bool)
    if value.ndim == 3:
        return None, value, jnp.ones(value.shape[:2], bool)
    raise FusionInputError(
        f"{block}: modality {name!r}: expected pooled (B, D) or tokens (B, T, D), "
        f"got shape {tuple(value.shape)} (rank {value.ndim})"
    )


def prepare(
    features: Mapping[str, Any],
    modality_mask: Optional[Mapping[str, Array]] = None,
    *,
    block: str,
    min_modalities: int = 2,
) -> FusionInputs:
    """Validates and sanitises fusion inputs. Raises FusionInputError on bad input."""
    if not isinstance(features, Mapping):
        raise FusionInputError(
            f"{block}: features must be a mapping modality name -> array, got {type(features).__name__}"
        )
    names = tuple(sorted(features))
    if len(names) < min_modalities:
        raise FusionInputError(
            f"{block}: needs at least {min_modalities} modalities, got {len(names)}: {list(names)}"
        )
    parts = {n: _as_parts(n, features[n], block) for n in names}
    sizes = {n: parts[n][1].shape[0] for n in names}
    if len(set(sizes.values())) != 1:
        raise FusionInputError(f"{block}: modalities disagree on batch size: {sizes}")
    batch = sizes[names[0]]
    if batch == 0:
        raise FusionInputError(f"{block}: an empty batch (0 examples)")

    modality_mask = dict(modality_mask or {})
    unknown = sorted(set(modality_mask) - set(names))
    if unknown:
        raise FusionInputError(
            f"{block}: modality_mask names {unknown}, which are not among the features {list(names)}"
        )
    present: Dict[str, Array] = {}
    for n in names:
        m = modality_mask.get(n)
        if m is None:
            present[n] = jnp.ones((batch,), bool)
            continue
        if not hasattr(m, "shape"):  # a list or tuple of flags
            m = jnp.asarray(m)
        if tuple(m.shape) != (batch,) or not (m.dtype == bool or jnp.issubdtype(m.dtype, jnp.integer)):
            raise FusionInputError(
                f"{block}: modality_mask[{n!r}] must be ({batch},) bool, got {tuple(m.shape)} {m.dtype}"
            )
        present[n] = m.astype(bool)

    pooled, tokens, token_mask = {}, {}, {}
    for n in names:
        p, t, tm = parts[n]
        tm = tm & present[n][:, None]
        t = jnp.where(tm[..., None], t, 0)
        p = masked_mean(t, tm) if p is None else jnp.where(present[n][:, None], p, 0)
        pooled[n], tokens[n], token_mask[n] = p, t, tm
    return FusionInputs(names, pooled, tokens, token_mask, present, batch)


def with_pooled_token(inputs: FusionInputs, block: str) -> FusionInputs:
    """``inputs`` with each modality's pooled vector prepended as one more token.

    tokens[m] (B, T_m, D_m) -> (B, 1 + T_m, D_m), the new first token real
    wherever the modality is present. An encoder's pooled summary can hold
    what its tokens alone do not make easy to read (``pool="flatten"`` keeps
    where a feature fired, which a mean over tokens loses); attention blocks
    see it as a class token. Needs pooled and token widths to agree.
    """
    tokens, token_mask = {}, {}
    for n in inputs.names:
        p, t = inputs.pooled[n], inputs.tokens[n]
        if p.shape[-1] != t.shape[-1]:
            raise FusionInputError(
                f"{block}: pooled_token needs modality {n!r}'s pooled width to equal its token width, "
                f"got pooled {tuple(p.shape)} and tokens {tuple(t.shape)}"
            )
        tokens[n] = jnp.concatenate([p[:, None].astype(t.dtype), t], axis=1)
        token_mask[n] = jnp.concatenate([inputs.present[n][:, None], inputs.token_mask[n]], axis=1)
    return dataclasses.replace(inputs, tokens=tokens, token_mask=token_mask)
