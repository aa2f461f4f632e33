"""Model families the train loop knows, selected by ``config.task``; each implements
:class:`~mmjax.train.tasks.base.Task` fully (model, loss, evaluation, checkpoint ranking), so the
loop, the parallel runner, checkpoints and logs are the same for all of them:

* ``classification`` (default): :class:`mmjax.models.classifier.Classifier` (:mod:`.classification`);
* ``contrastive``: :class:`mmjax.models.contrastive.ContrastiveModel` (:mod:`.contrastive`);
* ``captioning``: :class:`mmjax.models.captioner.Captioner` (:mod:`.captioning`).
"""
from __future__ import annotations

from typing import Any, Mapping, Type

from mmjax.train.config_access import setting
from mmjax.train.defaults import DEFAULTS
from mmjax.train.tasks.base import Task, TaskConfigError
from mmjax.train.tasks.captioning import CaptioningTask, write_samples
from mmjax.train.tasks.classification import ClassificationLoss, ClassificationTask
from mmjax.train.tasks.contrastive import ContrastiveTask

REGISTRY = {"classification": ClassificationTask, "contrastive": ContrastiveTask, "captioning": CaptioningTask}
TASKS = tuple(REGISTRY)


def task_class(config: Any) -> Type[Task]:
    """The :class:`Task` subclass named by ``config.task`` (default "classification")."""
    name = setting(config, "task") or DEFAULTS["task"]
    if name not in REGISTRY:
        raise TaskConfigError(f"config.task must be one of {TASKS}, got {name!r}")
    return REGISTRY[name]


def get_task(config: Any, info: Mapping[str, Any]) -> Task:
    """The task named by ``config.task``, for the dataset described by ``info`` (``num_classes``...)."""
    return task_class(config)(config, info)


__all__ = ["CaptioningTask", "ClassificationLoss", "ClassificationTask", "ContrastiveTask", "Task",
           "TaskConfigError", "get_task", "task_class", "write_samples", "TASKS"]
