"""Classification losses, per example, in float32.

Every loss returns a per-example vector (B,); :func:`weighted_sum` turns it
into the (sum of weighted losses, sum of weights) pair the train step reduces,
so that data-parallel replicas with different weight totals still average
correctly.
"""
from __future__ import annotations

from typing import Optional, Tuple

import jax
import jax.numpy as jnp

from mmjax import errors

Array = jax.Array


class LossConfigError(errors.ConfigError):
    """Bad loss input: label shape, class weights or smoothing out of range."""


def softmax_cross_entropy(
    logits: Array,
    labels: Array,
    *,
    label_smoothing: float = 0.0,
    class_weights: Optional[Array] = None,
) -> Array:
    """Softmax cross-entropy with label smoothing and per-class weights.

    Args:
      logits: (B, C).
      labels: (B,) int class ids in [0, C).
      label_smoothing: eps; the target is (1 - eps) * one_hot + eps / C.
      class_weights: optional (C,) weight; example i is scaled by class_weights[labels[i]].

    Returns:
      (B,) float32 losses.
    """
    if logits.ndim != 2:
        raise LossConfigError(f"softmax_cross_entropy: logits must be (B, C), got {logits.shape}")
    if labels.shape != logits.shape[:1]:
        raise LossConfigError(
            f"softmax_cross_entropy: labels must be (B,) = {logits.shape[:1]} int ids, got {labels.shape} "
            "(multi-label (B, C) targets need loss='sigmoid_bce')"
        )
    if not 0.0 <= label_smoothing < 1.0:
        raise LossConfigError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    num_classes = logits.shape[-1]
    logits = logits.astype(jnp.float32)
    targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    if label_smoothing:
        targets = targets * (1.0 - label_smoothing) + label_smoothing / num_classes
    loss = -jnp.sum(targets * jax.nn.log_softmax(logits, axis=-1), axis=-1)
    if class_weights is not None:
        class_weights = jnp.asarray(class_weights, jnp.float32)
        if class_weights.shape != (num_classes,):
            raise LossConfigError(
                f"class_weights must have shape ({num_classes},), got {class_weights.shape}"
            )
        loss = loss * class_weights[labels]
    return loss


def sigmoid_binary_cross_entropy(logits: Array, labels: Array) -> Array:
    """Multi-label sigmoid BCE, mean over classes.

    Args:
      logits: (B, C).
      labels: (B, C) float targets in [0, 1].

    Returns:
      (B,) float32 losses.
    """
    if logits.shape != labels.shape:
        raise LossConfigError(
            f"sigmoid_bce: labels must match logits (B, C) = {logits.shape}, got {labels.shape}"
        )
    x = logits.astype(jnp.float32)
    y = labels.astype(jnp.float32)
    # max(x, 0) - x*y + log(1 + exp(-|x|)): the stable form of -[y log s + (1-y) log(1-s)].
    per_class = jnp.maximum(x, 0) - x * y + jnp.log1p(jnp.exp(-jnp.abs(x)))
    return per_class.mean(axis=-1)


def weighted_sum(losses: Array, weight: Optional[Array] = None) -> Tuple[Array, Array]:
    """(B,) losses, optional (B,) example weights -> (sum w*l, sum w)."""
    if weight is None:
        weight = jnp.ones_like(losses)
    weight = weight.astype(jnp.float32)
    return jnp.sum(losses * weight), jnp.sum(weight)


LOSSES = {
    "softmax_xent": softmax_cross_entropy,
    "sigmoid_bce": sigmoid_binary_cross_entropy,
}
