"""Metrics, per family: ``classification`` (confusion-matrix metrics and ROC-AUC in numpy),
``retrieval`` (recall@K, zero-shot accuracy, linear probe on frozen embeddings), ``caption``
(corpus BLEU-4 and CIDEr-D). The classification metrics are re-exported here."""
from mmjax.metrics.classification import (
    accuracy,
    confusion_matrix,
    macro_f1,
    macro_f1_present,
    precision_recall_f1,
    roc_auc_ovr,
    roc_auc_per_class,
    summarize,
)

__all__ = [
    "accuracy",
    "confusion_matrix",
    "macro_f1",
    "macro_f1_present",
    "precision_recall_f1",
    "roc_auc_ovr",
    "roc_auc_per_class",
    "summarize",
]
