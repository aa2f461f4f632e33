"""What a run is made of, from its config: the parallel :class:`Runner` and the :class:`Checkpointer`.

Training, evaluation and :func:`mmjax.load` build both the same way, so a
checkpoint written by one reads back in the others.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Optional

import jax

from mmjax.train import files
from mmjax.train.checkpoint import Checkpointer, CheckpointError
from mmjax.train.config_access import as_dict as _as_dict, get as _get
from mmjax.train.optim import make_optimizer
from mmjax.train.parallel import Runner
from mmjax.train.step import NAN_POLICY
from mmjax.train.tasks import get_task

# checkpoint.async_save of a config that does not set it (experiments/configs/base.py reads it from here).
ASYNC_SAVE = True


def parallel_mode(config: Any) -> str:
    """config.parallel.mode, where "auto" is "single" on one device and "sharded" otherwise."""
    mode = _get(config.parallel, "mode", "auto")
    if mode == "auto":
        return "single" if jax.device_count() == 1 else "sharded"
    return mode


def build(config: Any, num_classes: int, info: Optional[Mapping[str, Any]] = None) -> Runner:
    """The model family's task (``config.task``, see :mod:`mmjax.train.tasks`), its model and
    optimizer, and the parallel runner that runs its steps (``runner.task``)."""
    info = dict(info or {})
    info.setdefault("num_classes", num_classes)
    task = get_task(config, info)
    train_cfg = _as_dict(_get(config, "train", {}))
    return Runner(
        parallel_mode(config), task.build_model(),
        lambda p: make_optimizer(_as_dict(config.optim), p, int(config.total_steps)),
        task=task,
        step_kwargs={"grad_accum_steps": int(train_cfg.get("grad_accum_steps", 1)),
                     "nan_policy": train_cfg.get("nan_policy", NAN_POLICY)},
        mesh_cfg=_as_dict(_get(config.parallel, "mesh", {"data": -1})),
        rules=_get(config.parallel, "rules", None),
        input_norm=info.get("image_norms"),
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
    task = get_task(config, {})  # ranks checkpoints by its own metric unless the config names one
    metric = ck_cfg.get("best_metric") or task.best_metric
    mode = ck_cfg.get("best_mode") or (task.best_mode if not ck_cfg.get("best_metric") else "max")
    return Checkpointer(os.fspath(directory), keep=int(ck_cfg.get("keep", 2)), best_metric=metric, best_mode=mode,
                        async_save=bool(ck_cfg.get("async_save", ASYNC_SAVE)) and not for_eval,
                        say=say, clean_partial=not for_eval)
