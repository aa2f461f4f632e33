"""The default of every run-config key the library reads, written once.

A config that lacks a key (a library user's own ConfigDict, a run record written
before the key existed) trains as if it held the value here, and
``experiments/configs/base.py`` takes its values from here, so an experiment and
a bare library call agree. The library reads such keys with
:func:`mmjax.train.config_access.setting` (dotted keys: ``"train.nan_policy"``).

Keys a run cannot do without (``total_steps``, ``batch_size``, ``data``,
``model``) have no default; model options keep theirs next to the code that
builds them (the model classes' attributes). ``optim.*`` is here, read by
:mod:`mmjax.train.optim`.

So a config lacking the keys trains as base.py's experiments do: it selects on
``"validation"`` (a dataset without it: a slice held out of its train split, see
:mod:`mmjax.train.selection`), reports ``"test"`` when the dataset has it,
evaluates and checkpoints every 500 steps and ranks checkpoints by its task's metric.
"""
from __future__ import annotations

from typing import Any, Dict

# Named on their own as well: other modules' signatures and messages use them.
NAN_POLICY = "skip"        # train.nan_policy
ASYNC_SAVE = True          # checkpoint.async_save
WORKDIR_LEASE_S = 120.0    # workdir_lease_s

DEFAULTS: Dict[str, Any] = {
    "task": "classification",   # see mmjax.train.tasks.TASKS
    "seed": 0,
    "log_every": 50,
    "eval_every": 500,          # 0: only at the end
    "eval_steps": 0,            # 0: the whole eval split
    "eval_split": "validation",
    "test_split": "test",
    "train_split": "train",
    "checkpoint_every": 500,    # 0: only at the end (and on preemption)
    "tensorboard": True,
    "workdir_lease_s": WORKDIR_LEASE_S,
    "data": {"name": ""},
    "loss": {"name": "softmax_xent", "label_smoothing": 0.0, "class_weights": ()},
    "train": {"grad_accum_steps": 1, "nan_policy": NAN_POLICY, "validate_batches": "every",
              "check_finite": "first"},
    "parallel": {"mode": "auto", "mesh": {"data": -1, "fsdp": 1, "tensor": 1},
                 "dcn_mesh": {"data": 1, "fsdp": 1, "tensor": 1}, "rules": ()},
    # best_metric / best_mode "": the task's (mmjax.train.tasks, e.g. accuracy / max for classifiers).
    "checkpoint": {"keep": 2, "best_metric": "", "best_mode": "", "async_save": ASYNC_SAVE},
    "init_from": {"path": "", "pretrained": "", "source": "", "target": ""},
    # The contrastive and captioning tasks' eval options: recall@k, zero-shot prompts ("{}" = the
    # class name; () = this default), linear-probe examples from train (0: none) and its L2;
    # captions by beam search (beam_size 1: greedy) with length penalty alpha, num_samples written out.
    "eval": {"ks": (1, 5, 10), "prompts": ("{}",), "probe_examples": 512, "probe_l2": 1e-4,
             "beam_size": 1, "alpha": 0.6, "num_samples": 20},
    # name: adamw | sgd; schedule: cosine | constant (both after a linear warmup); clip_norm 0: off;
    # momentum: sgd's (0: none); freeze: parameter path prefixes that get no update.
    "optim": {"name": "adamw", "learning_rate": 1e-3, "schedule": "cosine", "warmup_steps": 50,
              "end_lr_factor": 0.0, "weight_decay": 1e-4, "b1": 0.9, "b2": 0.999, "clip_norm": 1.0,
              "momentum": 0.0, "freeze": ()},
}


def default(key: str) -> Any:
    """The default of dotted ``key`` (a copy for sections); KeyError naming it when it has none."""
    node: Any = DEFAULTS
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(f"config key {key!r} has no default in mmjax.train.defaults")
        node = node[part]
    return _copy(node)


def _copy(x: Any) -> Any:
    return {k: _copy(v) for k, v in x.items()} if isinstance(x, dict) else x
