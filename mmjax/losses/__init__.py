"""Losses, per family: ``classification`` (softmax / sigmoid cross-entropy and the weighted sum the
train step reduces), ``contrastive`` (CLIP / SigLIP, per-shard and ring variants), ``caption``
(token NLL and the masked caption cross-entropy). The classification losses are re-exported here."""
from mmjax.losses.classification import (
    LOSSES,
    LossConfigError,
    sigmoid_binary_cross_entropy,
    softmax_cross_entropy,
    weighted_sum,
)

__all__ = ["LOSSES", "LossConfigError", "sigmoid_binary_cross_entropy", "softmax_cross_entropy", "weighted_sum"]
