"""What a run is made of, from its config: the parallel :class:`Runner` and the :class:`Checkpointer`.

Training, evaluation and :func:`mmjax.load` build both the same way, so a
checkpoint written by one reads back in the others.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Optional, Tuple

import jax

from mmjax.train import defaults, files
from mmjax.train.checkpoint import Checkpointer, CheckpointError
from mmjax.train.config_access import as_dict as _as_dict, copy_with, get as _get, setting
from mmjax.train.optim import make_optimizer
from mmjax.train.parallel import Runner
from mmjax.train.tasks import Task, get_task

ASYNC_SAVE = defaults.ASYNC_SAVE  # checkpoint.async_save's default, also imported from here


def parallel_mode(config: Any) -> str:
    """config.parallel.mode, where "auto" is "single" on one device and "sharded" otherwise."""
    mode = setting(config, "parallel.mode")
    if mode == "auto":
        return "single" if jax.device_count() == 1 else "sharded"
    return mode


def build(config: Any, num_classes: int, info: Optional[Mapping[str, Any]] = None) -> Runner:
    """The model family's task (``config.task``, see :mod:`mmjax.train.tasks`), its model and
    optimizer, and the parallel runner that runs its steps (``runner.task``)."""
    info = dict(info or {})
    info.setdefault("num_classes", num_classes)
    task = get_task(config, info)
    return Runner(
        parallel_mode(config), task.build_model(),
        lambda p: make_optimizer(_as_dict(config.optim), p, int(config.total_steps)),
        task=task,
        step_kwargs={"grad_accum_steps": int(setting(config, "train.grad_accum_steps")),
                     "nan_policy": setting(config, "train.nan_policy")},
        mesh_cfg=_as_dict(setting(config, "parallel.mesh")),
        rules=setting(config, "parallel.rules"),
        input_norm=info.get("image_norms"),
        dcn_cfg=_as_dict(setting(config, "parallel.dcn_mesh")),
    )


def open_checkpoints(config: Any, workdir: str, *, for_eval: bool = False,
                     say: Optional[Callable[[str], None]] = None) -> Checkpointer:
    """The run's :class:`Checkpointer` (``WORKDIR/checkpoints``, options from ``config.checkpoint``).

    ``for_eval``: the directory must already hold checkpoints; a wrong workdir is an
    error and nothing is created there. Otherwise (training owns the directory) the
    leftovers of failed saves are removed. ``say``: where lines about damaged
    checkpoints go (default: stderr).
    """
    directory = files.path(workdir) / "checkpoints"
    if for_eval and not directory.is_dir():
        raise CheckpointError(f"no checkpoints in {files.display(workdir)} (no {directory}): train first")
    metric, mode = best_checkpoint(config, get_task(config, {}))
    return Checkpointer(os.fspath(directory), keep=int(setting(config, "checkpoint.keep")), best_metric=metric,
                        best_mode=mode, async_save=bool(setting(config, "checkpoint.async_save")) and not for_eval,
                        say=say, clean_partial=not for_eval)


def best_checkpoint(config: Any, task: Task) -> Tuple[str, str]:
    """-> (metric, mode) that rank the run's checkpoints: ``checkpoint.best_metric`` / ``best_mode``
    where the config names them, else the task's (a metric named without a mode is maximised)."""
    metric = setting(config, "checkpoint.best_metric")
    mode = setting(config, "checkpoint.best_mode")
    return metric or task.best_metric, mode or (task.best_mode if not metric else "max")


def with_best_checkpoint(config: Any, task: Task) -> Any:
    """A copy of ``config`` whose ``checkpoint.best_metric`` / ``best_mode`` hold the ranking in effect
    (:func:`best_checkpoint`), so a run record names it the same way whether the config or the task
    chose it: a run recorded with an explicit ``"accuracy"`` resumes under ``""`` for a classifier."""
    metric, mode = best_checkpoint(config, task)
    return copy_with(config, checkpoint=dict(_as_dict(_get(config, "checkpoint")), best_metric=metric,
                                             best_mode=mode))
