"""``python -m experiments train EXPERIMENT --workdir DIR [--config.KEY=VALUE ...]``.

Trains an experiment (a name from ``python -m experiments list`` or a config
file path), resuming from DIR's checkpoints when there are any. Writes
DIR/metrics.jsonl, DIR/tensorboard/, DIR/checkpoints/ and DIR/results.json.
Multi-host: add ``--coordinator HOST:PORT --num_processes N --process_id I``
on every process; under SLURM (``srun``), Open MPI or on TPU pods the flags
can be left out: the environment is detected and ``jax.distributed.initialize()``
called (``--no-distributed`` turns that off; see :mod:`mmjax.train.distributed`).
"""
from __future__ import annotations

import argparse

from experiments import config_utils
from experiments.errors import UserError


class _OverrideParser(argparse.ArgumentParser):
    """An ArgumentParser that also accepts ``--config.KEY=VALUE`` (collected in ``args.overrides``)."""

    def parse_known_args(self, args=None, namespace=None):
        overrides, rest = config_utils.parse_override_args(list(args or []))
        ns, extras = super().parse_known_args(rest, namespace)
        ns.overrides = list(getattr(ns, "overrides", None) or []) + overrides
        return ns, extras


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiment", help="experiment name (see `list`) or path to a config .py file")
    p.add_argument("--workdir", required=True, help="run directory (checkpoints, logs, results)")
    p.add_argument("--coordinator", default=None, help="HOST:PORT of process 0 (multi-process)")
    p.add_argument("--num_processes", type=int, default=None)
    p.add_argument("--process_id", type=int, default=None)
    p.add_argument("--distributed", action=argparse.BooleanOptionalAction, default=None,
                   help="jax.distributed.initialize() with JAX's auto-detection; default: when the environment "
                        "is multi-process (SLURM srun, Open MPI, TPU pods); --no-distributed: never")


def make_subparser(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    saved = subparsers._parser_class
    subparsers._parser_class = _OverrideParser
    try:
        p = subparsers.add_parser(name, help=help_text, description=help_text,
                                  epilog="Override any config value with --config.KEY=VALUE (e.g. --config.optim.learning_rate=3e-4).")
    finally:
        subparsers._parser_class = saved
    add_common(p)
    return p


def add_parser(subparsers) -> argparse.ArgumentParser:
    return make_subparser(subparsers, "train", "train an experiment (resumes from the workdir's checkpoints)")


def prepare(args):
    """Distributed start-up, then the config with overrides applied."""
    from mmjax.train import distributed
    try:
        distributed.initialize(args.coordinator, args.num_processes, args.process_id, auto=args.distributed)
    except distributed.DistributedConfigError as e:
        raise UserError(str(e)) from None
    import os
    if os.path.exists(args.workdir) and not os.path.isdir(args.workdir):
        raise UserError(f"--workdir {args.workdir} is a file, not a directory")
    config = config_utils.load_config(args.experiment)
    config_utils.apply_overrides(config, getattr(args, "overrides", []))
    from experiments import modalities
    modalities.restrict(config)  # the ``modalities`` switch (unimodal baselines)
    for key in ("total_steps", "batch_size"):
        if key not in config:
            raise UserError(f"config {args.experiment!r} has no {key}")
    if "parallel" not in config or "mode" not in config.parallel or "mesh" not in config.parallel:
        raise UserError(f"config {args.experiment!r} needs parallel.mode and parallel.mesh")
    return config


def _user_errors():
    """Config mistakes surfacing from the library, reported as one line."""
    from mmjax.data.errors import DataConfigError
    from mmjax.models.classifier import ModelConfigError
    from mmjax.registry import UnknownNameError
    from mmjax.train.checkpoint import CheckpointError
    from mmjax.train.optim import OptimConfigError
    from mmjax.train.parallel import ParallelConfigError
    from mmjax.fusion.attention import AttentionConfigError
    from mmjax.fusion.base import FusionInputError
    from mmjax.train.health import WorkdirBusyError
    from mmjax.train.loop import WorkdirError
    from mmjax.train.step import StepConfigError
    from mmjax.validation import BatchValidationError
    return (ModelConfigError, UnknownNameError, CheckpointError, OptimConfigError, ParallelConfigError,
            StepConfigError, BatchValidationError, FusionInputError, AttentionConfigError, WorkdirError,
            WorkdirBusyError, DataConfigError)


def run(args) -> int:
    config = prepare(args)
    from mmjax.train import loop
    try:
        loop.train_and_evaluate(config, args.workdir)  # data: mmjax.data.factory, the loop's default
    except _user_errors() as e:
        raise UserError(str(e)) from None
    except loop.TrainingDiverged as e:
        raise UserError(str(e)) from None
    return 0
