"""Classification metrics in numpy (host side, after the device sums are gathered).

The eval step accumulates a confusion matrix on device; everything here is
derived from it (or from scores, for ROC-AUC) with plain numpy.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np


def confusion_matrix(labels, preds, num_classes: int, weight=None) -> np.ndarray:
    """(N,) true ids, (N,) predicted ids -> (C, C) counts, rows = true class, cols = predicted."""
    labels = np.asarray(labels, np.int64).reshape(-1)
    preds = np.asarray(preds, np.int64).reshape(-1)
    if labels.shape != preds.shape:
        raise ValueError(f"confusion_matrix: labels {labels.shape} and preds {preds.shape} differ")
    w = np.ones(labels.shape, np.float64) if weight is None else np.asarray(weight, np.float64).reshape(-1)
    cm = np.zeros((num_classes, num_classes), np.float64)
    np.add.at(cm, (labels, preds), w)
    return cm


def accuracy(confusion: np.ndarray) -> float:
    """Fraction on the diagonal of a (C, C) confusion matrix."""
    total = confusion.sum()
    return float(np.trace(confusion) / total) if total else 0.0


def precision_recall_f1(confusion: np.ndarray) -> Dict[str, np.ndarray]:
    """Per-class precision, recall and F1, each (C,); 0 where undefined (0/0)."""
    confusion = np.asarray(confusion, np.float64)
    tp = np.diag(confusion)
    predicted = confusion.sum(axis=0)
    actual = confusion.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(actual > 0, tp / actual, 0.0)
        denom = precision + recall
        f1 = np.where(denom > 0, 2 * precision * recall / denom, 0.0)
    return {"precision": precision, "recall": recall, "f1": f1}


def macro_f1(confusion: np.ndarray) -> float:
    """Unweighted mean of per-class F1 over all C classes (a class absent from the split counts 0)."""
    return float(precision_recall_f1(confusion)["f1"].mean())


def macro_f1_present(confusion: np.ndarray) -> float:
    """Unweighted mean of per-class F1 over the classes with at least one true example (rows of
    ``confusion`` that are not all zero): the figure to compare across splits that lack classes."""
    present = np.asarray(confusion).sum(1) > 0
    if not present.any():
        return float("nan")
    return float(precision_recall_f1(confusion)["f1"][present].mean())


def roc_auc_ovr(labels, scores, *, average: str = "macro") -> float:
    """One-vs-rest ROC-AUC.

    Args:
      labels: (N,) int class ids.
      scores: (N, C) scores (probabilities or logits; only their order matters).
      average: only "macro" (mean over the classes that have both positives
        and negatives); per-class values come from :func:`roc_auc_per_class`.

    Returns:
      The macro average; NaN if no class has both positives and negatives.
    """
    if average != "macro":
        raise ValueError(f"roc_auc_ovr: average must be 'macro', got {average!r}")
    per_class = roc_auc_per_class(labels, scores)
    valid = per_class[~np.isnan(per_class)]
    return float(valid.mean()) if valid.size else float("nan")


def roc_auc_per_class(labels, scores) -> np.ndarray:
    """(N,) ids, (N, C) scores -> (C,) AUC per class (NaN where a class lacks positives or negatives).

    AUC = P(score of a random positive > score of a random negative), ties
    counting 1/2: the Mann-Whitney U statistic over average ranks.
    """
    labels = np.asarray(labels).reshape(-1)
    scores = np.asarray(scores, np.float64)
    if scores.ndim != 2 or scores.shape[0] != labels.shape[0]:
        raise ValueError(f"roc_auc: scores must be (N, C) with N={labels.shape[0]}, got {scores.shape}")
    out = np.full(scores.shape[1], np.nan)
    for c in range(scores.shape[1]):
        pos = labels == c
        n_pos, n_neg = int(pos.sum()), int((~pos).sum())
        if n_pos == 0 or n_neg == 0:
            continue
        ranks = _average_ranks(scores[:, c])
        out[c] = (ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return out


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    ranks = np.empty(len(x), np.float64)
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def summarize(confusion: np.ndarray, loss_sum: float, weight_sum: float,
              class_names: Optional[list] = None) -> Dict[str, object]:
    """The eval metrics dict the loop logs: loss, accuracy, macro_f1 (all classes), macro_f1_present
    (classes present in the split) and per-class P/R/F1."""
    prf = precision_recall_f1(confusion)
    names = class_names or [str(i) for i in range(confusion.shape[0])]
    return {
        "loss": float(loss_sum / weight_sum) if weight_sum else float("nan"),
        "accuracy": accuracy(confusion),
        "macro_f1": macro_f1(confusion),
        "macro_f1_present": macro_f1_present(confusion),
        "per_class": {
            n: {k: float(prf[k][i]) for k in ("precision", "recall", "f1")} for i, n in enumerate(names)
        },
        "confusion_matrix": np.asarray(confusion).astype(int).tolist()
        if np.allclose(confusion, np.round(confusion))
        else np.asarray(confusion).tolist(),
        "num_examples": float(weight_sum),
    }
