"""Moved to :mod:`mmjax.metrics.retrieval`; this module re-exports it for existing imports."""
from mmjax.metrics import retrieval as _retrieval
from mmjax.metrics.retrieval import (
    RetrievalInputError,
    linear_probe,
    linear_probe_predict,
    recall_at_k,
    retrieval_metrics,
    retrieval_ranks,
    zero_shot_accuracy,
    zero_shot_classifier,
    zero_shot_predict,
)

_probe_loss = _retrieval._probe_loss  # private, but tests take its gradient through this path

__all__ = [
    "RetrievalInputError",
    "linear_probe",
    "linear_probe_predict",
    "recall_at_k",
    "retrieval_metrics",
    "retrieval_ranks",
    "zero_shot_accuracy",
    "zero_shot_classifier",
    "zero_shot_predict",
]
