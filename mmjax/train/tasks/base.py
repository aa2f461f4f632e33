"""The :class:`Task` contract every model family implements, and the helpers the families share.

A task bundles what differs between families while the loop, the parallel runner,
checkpoints and logs stay the same:

* ``build_model()``: the linen module, called as ``model.apply(variables, batch, train=...)``;
* ``loss_terms(apply_fn, params, batch_stats, batch, rng, *, train, shards)`` ->
  ``(loss_sum, (weight_sum, aux, new_batch_stats))``: :func:`mmjax.train.step.train_step`
  divides the sums by the global weight, so the reported loss is the exact global mean in every
  parallel mode; ``aux`` maps a metric name to a ``(sum, count)`` pair reported as
  ``sum / count`` over the global batch; ``shards`` (:class:`mmjax.sharding.BatchShards`) is
  where the batch's rows are, for losses that need all of them (contrastive negatives);
* ``evaluate(runner, state, batches, out_dir=None, split=None)`` -> metrics over the whole split;
* ``best_metric`` / ``best_mode``: what ranks checkpoints when ``config.checkpoint`` does not say;
* ``input_spec(info)``: the model config the first batch is validated against, and the label kind.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax import errors
from mmjax.sharding import BatchShards
from mmjax.train.config_access import as_dict as _as_dict, get as _get, setting

PyTree = Any
Batches = Callable[[str], Iterator[Dict[str, Any]]]
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


class TaskConfigError(errors.ConfigError):
    """Bad ``config.task`` or task-specific config (model kwargs, eval options, dataset info)."""


def dtype(name: Any, key: str):
    """A dtype name of the config -> the jnp dtype (``key`` names the config key in the error)."""
    if not isinstance(name, str):
        return name
    if name not in DTYPES:
        raise TaskConfigError(f"{key} must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def freeze(x: Any) -> Any:
    """Nested dicts/lists -> hashable-friendly tuples where linen attributes need them."""
    if isinstance(x, Mapping):
        return {k: freeze(v) for k, v in x.items()}
    if isinstance(x, list):
        return tuple(freeze(v) for v in x)
    return x


def tokenizer(info: Mapping[str, Any]):
    """The dataset's tokenizer (an object, a tokenizer.json path or its JSON text), or None."""
    tok = info.get("tokenizer")
    if tok is None or hasattr(tok, "decode"):
        return tok
    from mmjax import tokenizer as tok_lib
    if isinstance(tok, str) and os.path.exists(tok):
        return tok_lib.load(tok)
    return tok_lib.from_json(tok)


def apply_model(apply_fn, params, batch_stats, batch, rng, train: bool, **kwargs) -> Tuple[Any, PyTree]:
    """``apply_fn`` on ``batch`` -> (output, new batch_stats); batch_stats are updated only in training."""
    variables = {"params": params}
    if batch_stats:
        variables["batch_stats"] = batch_stats
    if batch_stats and train:
        out, updates = apply_fn(variables, batch, train=True, rngs={"dropout": rng}, mutable=["batch_stats"],
                                **kwargs)
        return out, updates["batch_stats"]
    return apply_fn(variables, batch, train=train, rngs={"dropout": rng}, **kwargs), batch_stats


def example_weight(batch: Mapping[str, Any], n: int) -> jax.Array:
    """The batch's (B,) example weights as float32 (ones when it has none)."""
    w = batch.get("weight")
    return jnp.ones((n,), jnp.float32) if w is None else w.astype(jnp.float32)


def gather(x: Any) -> np.ndarray:
    """A device array (possibly spanning processes) -> the full numpy array."""
    if jax.process_count() > 1 and isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def real_rows(batch: Mapping[str, Any]) -> np.ndarray:
    """(B,) bool: the rows of a batch that are examples (weight > 0), not padding of a last batch."""
    return np.asarray(batch.get("weight", np.ones(len(batch["label"]))), np.float32) > 0


class Task:
    """Base class; see the module docstring for the contract."""

    name = ""
    best_metric = "loss"
    best_mode = "min"

    def __init__(self, config: Any, info: Mapping[str, Any]):
        self.config = config
        self.info = dict(info)
        self.model_cfg = _as_dict(_get(config, "model"))

    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def loss_terms(self, apply_fn, params, batch_stats, batch, rng, *, train: bool,
                   shards: BatchShards = BatchShards()):
        raise NotImplementedError

    def evaluate(self, runner, state, batches: Batches, out_dir: Optional[str] = None,
                 split: Optional[str] = None) -> Dict[str, Any]:
        raise NotImplementedError

    def input_spec(self, info: Mapping[str, Any]) -> Tuple[Dict[str, Any], Optional[str]]:
        """-> (model config, label kind) the first batch is validated against. Families whose
        configs name their inputs their own way (towers, encoder + target) are checked against the
        dataset's modalities, with the label kind from the data (COCO's multi-hot objects ride along)."""
        model_cfg = {"encoders": {m: {} for m in (info.get("modalities") or ())}}
        multi = _get(_get(self.config, "data"), "label_kind") == "multi_hot"
        return model_cfg, "multi" if multi else "int"

    def logged_eval(self, metrics: Mapping[str, Any]) -> Dict[str, Any]:
        """The eval metrics written to the run's logs (``eval/`` prefix): every number by default."""
        return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}

    def split_and_limit(self, split: Optional[str]) -> Tuple[str, int]:
        """-> (the split to evaluate: ``split`` or ``config.eval_split``, ``config.eval_steps`` (0: all))."""
        return split or setting(self.config, "eval_split"), int(setting(self.config, "eval_steps"))

    # Evaluation helpers: params on the host layout, batches on the runner's layout.
    def variables(self, runner, state) -> Dict[str, PyTree]:
        return runner.host_state(state).variables

    def put(self, runner, batch: Mapping[str, Any]) -> PyTree:
        if runner.mode == "sharded":
            return runner.put_batch(batch)
        return jax.tree.map(np.asarray, dict(batch))
