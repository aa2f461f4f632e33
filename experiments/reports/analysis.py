"""Evaluation analyses on a trained classifier: predictions, ROC curves, modality robustness.

Everything here runs one compiled forward pass (``predict``) over the eval
batches; robustness variants change input *values* (modality_mask, added
noise), never shapes, so they reuse the same compiled function.
"""
from __future__ import annotations

import zlib
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np

from mmjax import metrics as metrics_lib
from mmjax.train.predict import gather_rows

NOISE_LEVELS = (0.0, 0.25, 0.5, 1.0, 2.0)


def complete_masks(batch: Mapping[str, Any]) -> Dict[str, Any]:
    """A shallow copy of ``batch`` with a (B,) True modality_mask for every input that lacks one
    (so masking a modality later changes values, not the pytree structure)."""
    out = dict(batch)
    n = len(batch["label"])
    mm = dict(batch.get("modality_mask") or {})
    for m in batch["inputs"]:
        mm.setdefault(m, np.ones(n, bool))
    out["modality_mask"] = mm
    out["inputs"] = dict(batch["inputs"])
    return out


def model_inputs(batch: Mapping[str, Any]) -> Dict[str, Any]:
    """The entries of ``batch`` the classifier reads (labels and weights stay on the host)."""
    return {k: batch[k] for k in ("inputs", "token_mask", "modality_mask") if k in batch}


def make_predict_fn(model, variables) -> Callable[[Mapping[str, Any]], np.ndarray]:
    """batch -> (B, C) float32 logits, one jit for all batches of the same shapes (host ``variables``)."""
    import jax

    fn = jax.jit(lambda v, b: model.apply(v, b, train=False))
    return lambda batch: np.asarray(fn(variables, model_inputs(batch)), np.float32)


def runner_predict_fn(runner, state) -> Callable[[Mapping[str, Any]], np.ndarray]:
    """batch (this process's rows) -> their (B, C) float32 logits, computed in the runner's parallel
    mode on ``state`` as the runner placed it (:meth:`mmjax.train.parallel.Runner.predict`)."""
    return lambda batch: np.asarray(runner.predict(state, model_inputs(batch)), np.float32)


def collect(batches: Iterable[Mapping[str, Any]], max_batches: Optional[int] = None,
            image_norms: Optional[Mapping[str, Any]] = None) -> List[Dict[str, Any]]:
    """The eval batches as a list (with complete modality masks and float32 images normalised by
    ``image_norms``), so variants (masking, noise) can re-run them."""
    from mmjax.data.normalize import normalize_images

    out = []
    for i, b in enumerate(batches):
        if max_batches and i >= max_batches:
            break
        out.append(complete_masks(normalize_images(b, image_norms or {})))
    if not out:
        raise ValueError("evaluation got no batches (check eval_split / eval_steps)")
    return out


def run_predictions(predict, batches: Sequence[Mapping[str, Any]],
                    transform: Optional[Callable[[int, Dict[str, Any]], Dict[str, Any]]] = None):
    """-> (labels (N,), logits (N, C), weights (N,)) over ``batches`` (padding rows have weight 0).

    ``batches`` are this process's rows; N counts every process's (process 0's first: all processes
    call this together, see :func:`mmjax.train.predict.gather_rows`)."""
    labels, logits, weights = [], [], []
    for i, b in enumerate(batches):
        if transform is not None:
            b = transform(i, b)
        logits.append(predict(b))
        labels.append(np.asarray(b["label"]))
        w = b.get("weight")
        weights.append(np.ones(len(b["label"]), np.float32) if w is None else np.asarray(w, np.float32))
    return gather_rows((np.concatenate(labels), np.concatenate(logits), np.concatenate(weights)))


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def weighted_accuracy(labels, logits, weights) -> float:
    keep = weights > 0
    return float(np.average(np.argmax(logits[keep], -1) == labels[keep], weights=weights[keep]))


def full_metrics(labels, logits, weights, class_names: Optional[List[str]] = None) -> Dict[str, Any]:
    """accuracy, macro-F1, per-class P/R/F1, confusion, loss, ROC-AUC (macro and per class)."""
    keep = weights > 0
    labels, logits, weights = labels[keep], logits[keep], weights[keep]
    c = logits.shape[-1]
    cm = metrics_lib.confusion_matrix(labels, np.argmax(logits, -1), c, weights)
    logp = np.log(np.maximum(softmax(logits.astype(np.float64)), 1e-30))
    loss_sum = float(-(weights * logp[np.arange(len(labels)), labels]).sum())
    out = metrics_lib.summarize(cm, loss_sum, float(weights.sum()), class_names)
    per_class_auc = metrics_lib.roc_auc_per_class(labels, logits)
    names = class_names or [str(i) for i in range(c)]
    out["roc_auc_ovr"] = metrics_lib.roc_auc_ovr(labels, logits)
    out["roc_auc_per_class"] = {n: (None if np.isnan(a) else float(a)) for n, a in zip(names, per_class_auc)}
    return out


def roc_curve(positive: np.ndarray, scores: np.ndarray) -> Dict[str, np.ndarray]:
    """One ROC curve: (fpr, tpr) at every distinct score threshold, from (0, 0) to (1, 1)."""
    order = np.argsort(-scores, kind="mergesort")
    s, pos = scores[order], positive[order].astype(np.float64)
    # Only the last index of each run of tied scores is a valid operating point.
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tp = np.cumsum(pos)[last]
    fp = np.cumsum(1 - pos)[last]
    p, n = max(pos.sum(), 1e-12), max((1 - pos).sum(), 1e-12)
    return {"fpr": np.r_[0.0, fp / n], "tpr": np.r_[0.0, tp / p]}


def roc_curves(labels, logits, weights, class_names: Optional[List[str]] = None) -> Dict[str, Dict[str, Any]]:
    """Per class (with both positives and negatives): {"fpr", "tpr", "auc"}; AUC = trapezoid area."""
    keep = weights > 0
    labels, logits = labels[keep], logits[keep]
    names = class_names or [str(i) for i in range(logits.shape[-1])]
    out = {}
    for k, name in enumerate(names):
        pos = labels == k
        if pos.all() or not pos.any():
            continue
        cur = roc_curve(pos, logits[:, k])
        cur["auc"] = float(np.trapezoid(cur["tpr"], cur["fpr"]))
        out[name] = cur
    return out


def input_stds(batches: Sequence[Mapping[str, Any]]) -> Dict[str, float]:
    """Std of each float modality's inputs over the eval set (present examples only; every process's)."""
    out = {}
    for m in batches[0]["inputs"]:
        x0 = np.asarray(batches[0]["inputs"][m])
        if not np.issubdtype(x0.dtype, np.floating):
            continue  # token ids: additive noise is meaningless
        vals = []
        for b in batches:
            present = np.asarray(b["modality_mask"][m], bool)
            if "weight" in b:
                present = present & (np.asarray(b["weight"]) > 0)
            vals.append(np.asarray(b["inputs"][m], np.float64)[present].ravel())
        v = np.concatenate(vals) if vals else np.zeros(1)
        # Two passes over every process's values (mean, then squared deviations), as np.std does.
        n = int(_total(v.size))
        mean = _total(v.sum()) / max(n, 1)
        out[m] = float(np.sqrt(_total(np.square(v - mean).sum()) / n)) if n else 0.0
    return out


def _total(x) -> np.float64:
    """A per-process number summed over the processes."""
    return gather_rows(np.asarray([x], np.float64)).sum()


def robustness(predict, batches: Sequence[Dict[str, Any]], levels: Sequence[float] = NOISE_LEVELS,
               seed: int = 0) -> Dict[str, Any]:
    """Accuracy with each modality masked out, and with Gaussian noise of std ``level x std(input)``
    added to one modality at a time (fixed noise per (seed, modality, level, batch))."""
    labels, logits, weights = run_predictions(predict, batches)
    out: Dict[str, Any] = {"clean_accuracy": weighted_accuracy(labels, logits, weights), "masked": {}, "noise": {},
                           "noise_levels": list(map(float, levels))}
    mods = sorted(batches[0]["inputs"])
    for m in mods:
        def mask(i, b, m=m):
            b = dict(b, modality_mask=dict(b["modality_mask"]))
            b["modality_mask"][m] = np.zeros_like(np.asarray(b["modality_mask"][m]), bool)
            return b
        out["masked"][m] = weighted_accuracy(*run_predictions(predict, batches, mask))
    stds = input_stds(batches)
    out["input_std"] = stds
    for m in sorted(stds):
        out["noise"][m] = {}
        for level in levels:
            def noisy(i, b, m=m, level=level):
                x = np.asarray(b["inputs"][m])
                rng = np.random.default_rng([seed, zlib.crc32(m.encode()), int(level * 1000), i])
                b = dict(b, inputs=dict(b["inputs"]))
                b["inputs"][m] = (x + level * stds[m] * rng.standard_normal(x.shape)).astype(x.dtype)
                return b
            acc = out["clean_accuracy"] if level == 0 else weighted_accuracy(*run_predictions(predict, batches, noisy))
            out["noise"][m][str(float(level))] = acc
    return out
