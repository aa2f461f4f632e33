"""What a run is made of, from its config: the parallel :class:`Runner` and the :class:`Checkpointer`.

Training, evaluation and :func:`mmjax.load` build both the same way, so a
checkpoint written by one reads back in the others.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Optional

import jax

from mmjax.models.classifier import build_classifier
from mmjax.train import files
from mmjax.train.checkpoint import Checkpointer, CheckpointError
from mmjax.train.config_access import as_dict as _as_dict, get as _get
from mmjax.train.optim import make_optimizer
from mmjax.train.parallel import Runner
from mmjax.train.tasks import get_task

# checkpoint.async_save for configs that do not set it; experiments/configs/base.py sets the same.
ASYNC_SAVE = True


def parallel_mode(config: Any) -> str:
    """config.parallel.mode, where "auto" is "single" on one device and "sharded" otherwise."""
    mode = _get(config.parallel, "mode", "auto")
    if mode == "auto":
        return "single" if jax.device_count() == 1 else "sharded"
    return mode


def build(config: Any, num_classes: int, info: Optional[Mapping[str, Any]] = None) -> Runner:
    """Model, optimizer and the parallel runner from ``config`` (``config.task`` picks the
    model family, see :mod:`mmjax.train.tasks`; the runner keeps it as ``runner.task``)."""
    task = get_task(config, info or {"num_classes": num_classes})
    if task.name != "classification":
        train_cfg = _as_dict(_get(config, "train", {}))
        runner = Runner(
            parallel_mode(config), task.build_model(),
            lambda p: make_optimizer(_as_dict(config.optim), p, int(config.total_steps)),
            step_kwargs={"grad_accum_steps": int(train_cfg.get("grad_accum_steps", 1)),
                         "nan_policy": train_cfg.get("nan_policy", "skip"), "task": task},
            mesh_cfg=_as_dict(_get(config.parallel, "mesh", {"data": -1})),
            rules=_get(config.parallel, "rules", None),
            input_norm=(info or {}).get("image_norms"),
            dcn_cfg=_as_dict(_get(config.parallel, "dcn_mesh", {})),
        )
        runner.task = task.attach(runner)
        return runner
    model = build_classifier(_as_dict(config.model), num_classes)
    total = int(config.total_steps)
    optim_cfg = _as_dict(config.optim)
    loss_cfg = _as_dict(_get(config, "loss", {}))
    loss_kwargs = {
        "loss": loss_cfg.get("name", "softmax_xent"),
        "label_smoothing": float(loss_cfg.get("label_smoothing", 0.0)),
        "class_weights": tuple(loss_cfg["class_weights"]) if loss_cfg.get("class_weights") else None,
    }
    train_cfg = _as_dict(_get(config, "train", {}))
    step_kwargs = dict(loss_kwargs, grad_accum_steps=int(train_cfg.get("grad_accum_steps", 1)),
                       nan_policy=train_cfg.get("nan_policy", "skip"))
    eval_kwargs = dict(loss_kwargs, num_classes=num_classes)
    return Runner(
        parallel_mode(config), model, lambda p: make_optimizer(optim_cfg, p, total),
        step_kwargs=step_kwargs, eval_kwargs=eval_kwargs,
        mesh_cfg=_as_dict(_get(config.parallel, "mesh", {"data": -1})),
        rules=_get(config.parallel, "rules", None),
        input_norm=(info or {}).get("image_norms"),
        dcn_cfg=_as_dict(_get(config.parallel, "dcn_mesh", {})),
    )


def open_checkpoints(config: Any, workdir: str, *, for_eval: bool = False,
                     say: Optional[Callable[[str], None]] = None) -> Checkpointer:
    """The run's :class:`Checkpointer` (``WORKDIR/checkpoints``, options from ``config.checkpoint``).

    ``for_eval``: the directory must already hold checkpoints; a wrong workdir is an
    error and nothing is created there. Otherwise (training owns the directory) the
    leftovers of failed saves are removed. ``say``: where lines about damaged
    checkpoints go (default: stderr).
    """
    ck_cfg = _as_dict(_get(config, "checkpoint", {}))
    directory = files.path(workdir) / "checkpoints"
    if for_eval and not directory.is_dir():
        raise CheckpointError(f"no checkpoints in {files.display(workdir)} (no {directory}): train first")
    return Checkpointer(os.fspath(directory), keep=int(ck_cfg.get("keep", 2)),
                        best_metric=ck_cfg.get("best_metric") or None, best_mode=ck_cfg.get("best_mode", "max"),
                        async_save=bool(ck_cfg.get("async_save", ASYNC_SAVE)) and not for_eval,
                        say=say, clean_partial=not for_eval)
