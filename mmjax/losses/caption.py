"""Caption losses: per-token negative log-likelihood and the masked token cross-entropy.

The captioner's ``apply`` returns logits (B, L, V) aligned with the caption
(B, L) itself (teacher forcing scores ``[y_1, ..., y_L]``), so both functions
take logits and targets of the same length; ``pad_id`` marks padding.
"""
from __future__ import annotations

from typing import Dict, Tuple

import jax
import jax.numpy as jnp

from mmjax import errors

Array = jax.Array


class CaptionerConfigError(errors.ConfigError):
    """Bad captioner config or batch (decoder kind, ids, missing modality, logits/targets shapes).

    Defined with the caption loss, which raises it too; :mod:`mmjax.models.captioner` re-exports it.
    """


def token_nll(logits: Array, targets: Array, label_smoothing: float = 0.0) -> Tuple[Array, Array]:
    """(B, L, V) logits, (B, L) int targets -> ((B, L) f32 negative log-likelihood, (B, L, V) log-probs);
    ``label_smoothing`` spreads that mass uniformly over the vocabulary."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    if label_smoothing:
        nll = (1 - label_smoothing) * nll - label_smoothing * logp.mean(-1)
    return nll, logp


def caption_loss(
    logits: Array, targets: Array, pad_id: int = 0, label_smoothing: float = 0.0
) -> Tuple[Array, Dict[str, Array]]:
    """Token cross-entropy averaged over non-padding targets.

    Args:
      logits: (B, L, V); targets: (B, L) int, ``pad_id`` marks padding.
      label_smoothing: mass spread uniformly over the vocabulary.

    Returns:
      (loss, {"loss", "token_accuracy", "num_tokens"}); an all-padding batch
      gives loss 0, not NaN.
    """
    if logits.shape[:2] != targets.shape:
        raise CaptionerConfigError(
            f"caption_loss: logits {tuple(logits.shape)} do not match targets {tuple(targets.shape)}"
        )
    nll, logp = token_nll(logits, targets, label_smoothing)
    mask = (targets != pad_id).astype(jnp.float32)
    count = mask.sum()
    loss = (nll * mask).sum() / jnp.maximum(count, 1.0)
    acc = ((jnp.argmax(logp, -1) == targets) * mask).sum() / jnp.maximum(count, 1.0)
    return loss, {"loss": loss, "token_accuracy": acc, "num_tokens": count}


__all__ = ["CaptionerConfigError", "caption_loss", "token_nll"]
