"""The classifier family: :class:`mmjax.models.classifier.Classifier` trained with a weighted
softmax cross-entropy (or sigmoid BCE for multi-label), evaluated by summing a confusion matrix."""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax import losses as losses_lib
from mmjax import metrics as metrics_lib
from mmjax.sharding import BatchShards
from mmjax.train.config_access import setting
from mmjax.train.tasks.base import Batches, Task, TaskConfigError, apply_model

PyTree = Any


class LossConfigError(TaskConfigError):
    """Bad ``config.loss`` (name, class weights)."""


@dataclasses.dataclass(frozen=True)
class ClassificationLoss:
    """The classifier's objective and eval sums (``config.loss``); ``num_classes`` sizes the confusion."""

    num_classes: int = 0
    loss: str = "softmax_xent"
    label_smoothing: float = 0.0
    class_weights: Optional[Tuple[float, ...]] = None

    def logits_and_weight(self, apply_fn, params, batch_stats, batch, rng, train: bool):
        """-> (per-example loss (B,), weight (B,) or None, logits (B, C), new batch_stats)."""
        logits, new_stats = apply_model(apply_fn, params, batch_stats, batch, rng, train)
        labels, weight = batch["label"], batch.get("weight")
        if self.loss == "softmax_xent":
            per_example = losses_lib.softmax_cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
            if self.class_weights is not None:
                # Class weights join the example weights, so the mean is
                # sum(w_i c_{y_i} l_i) / sum(w_i c_{y_i}) (the usual weighted-mean convention).
                cw = jnp.asarray(self.class_weights, jnp.float32)
                if cw.shape != logits.shape[-1:]:
                    raise LossConfigError(f"loss.class_weights has {cw.shape[0]} entries but the model has "
                                          f"{logits.shape[-1]} classes")
                weight = cw[labels] if weight is None else weight.astype(jnp.float32) * cw[labels]
        elif self.loss == "sigmoid_bce":
            per_example = losses_lib.sigmoid_binary_cross_entropy(logits, labels)
        else:
            raise LossConfigError(f"loss.name must be one of {sorted(losses_lib.LOSSES)}, got {self.loss!r}")
        return per_example, weight, logits, new_stats

    def loss_terms(self, apply_fn, params, batch_stats, batch, rng, *, train: bool,
                   shards: BatchShards = BatchShards()):
        """-> (weighted loss sum, (weight sum, {"accuracy": (correct, rows)}, new batch_stats))."""
        del shards  # a mean of per-example terms: the step's weight reduction makes it global
        per_example, weight, logits, new_stats = self.logits_and_weight(apply_fn, params, batch_stats, batch,
                                                                         rng, train)
        total, weight = losses_lib.weighted_sum(per_example, weight)
        aux = {}
        if self.loss == "softmax_xent":
            correct = jnp.sum((jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32))
            aux["accuracy"] = (correct, jnp.asarray(logits.shape[0], jnp.float32))
        return total, (weight, aux, new_stats)

    def eval_sums(self, apply_fn, params, batch_stats, batch) -> Dict[str, jax.Array]:
        """``loss_sum``, ``weight_sum`` and, for single-label losses, a weighted (C, C) ``confusion``
        (rows = true class); rows of weight 0 (padding of a last batch) count for nothing."""
        per_example, weight, logits, _ = self.logits_and_weight(apply_fn, params, batch_stats, batch,
                                                                jax.random.PRNGKey(0), False)
        total, weight_sum = losses_lib.weighted_sum(per_example, weight)
        out = {"loss_sum": total, "weight_sum": weight_sum}
        if self.loss == "softmax_xent":
            w = batch.get("weight")
            w = jnp.ones(logits.shape[:1], jnp.float32) if w is None else w.astype(jnp.float32)
            true = jax.nn.one_hot(batch["label"], self.num_classes, dtype=jnp.float32) * w[:, None]
            pred = jax.nn.one_hot(jnp.argmax(logits, -1), self.num_classes, dtype=jnp.float32)
            out["confusion"] = true.T @ pred
        return out


def loss_from_config(config: Any, num_classes: int) -> ClassificationLoss:
    """``config.loss`` -> :class:`ClassificationLoss`."""
    weights = setting(config, "loss.class_weights")
    return ClassificationLoss(num_classes=int(num_classes), loss=setting(config, "loss.name"),
                              label_smoothing=float(setting(config, "loss.label_smoothing")),
                              class_weights=tuple(float(w) for w in weights) if weights else None)


class ClassificationTask(Task):
    """The multimodal classifier; eval: loss, accuracy, macro-F1 and per-class P/R/F1."""

    name = "classification"
    best_metric = "accuracy"
    best_mode = "max"

    def __init__(self, config: Any, info: Mapping[str, Any]):
        super().__init__(config, info)
        self.objective = loss_from_config(config, int(self.info.get("num_classes") or 0))
        if self.objective.loss != "softmax_xent":  # multi-label: no accuracy to rank by
            self.best_metric, self.best_mode = "loss", "min"

    def build_model(self) -> nn.Module:
        from mmjax.models.classifier import build_classifier
        return build_classifier(self.model_cfg, int(self.info["num_classes"]))

    def loss_terms(self, apply_fn, params, batch_stats, batch, rng, *, train: bool,
                   shards: BatchShards = BatchShards()):
        return self.objective.loss_terms(apply_fn, params, batch_stats, batch, rng, train=train, shards=shards)

    def eval_sums(self, apply_fn, params, batch_stats, batch) -> Dict[str, jax.Array]:
        return self.objective.eval_sums(apply_fn, params, batch_stats, batch)

    def input_spec(self, info: Mapping[str, Any]):
        return self.model_cfg, None

    def logged_eval(self, metrics: Mapping[str, Any]) -> Dict[str, Any]:
        return {k: v for k, v in metrics.items() if k in ("loss", "accuracy", "macro_f1", "per_class")}

    def evaluate(self, runner, state, batches: Batches, out_dir: Optional[str] = None,
                 split: Optional[str] = None) -> Dict[str, Any]:
        split, limit = self.split_and_limit(split)
        return sum_eval(runner, state, batches(split), limit or None)


def sum_eval(runner, state, batches, max_batches: Optional[int] = None) -> Dict[str, Any]:
    """Adds the runner's eval sums over ``batches`` -> loss, accuracy, macro-F1, per-class P/R/F1, confusion."""
    total: Dict[str, np.ndarray] = {}
    for i, batch in enumerate(batches):
        if max_batches and i >= max_batches:
            break
        sums = runner.eval_sums(runner.eval_step(state, runner.put_batch(batch)))
        for k, v in sums.items():
            total[k] = total.get(k, 0) + v
    if not total:
        raise ValueError("evaluation got no batches (check eval_split / eval_steps)")
    if "confusion" in total:
        return metrics_lib.summarize(total["confusion"], float(total["loss_sum"]), float(total["weight_sum"]))
    return {"loss": float(total["loss_sum"] / max(total["weight_sum"], 1e-12)),
            "num_examples": float(total["weight_sum"])}
