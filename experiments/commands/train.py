"""``python -m experiments train EXPERIMENT --workdir DIR [--config.KEY=VALUE ...]``.

Trains an experiment (a name from ``python -m experiments list`` or a config
file path), resuming from DIR's checkpoints when there are any. Writes
DIR/config.json (the run's config: resume, ``eval``, ``predict`` and ``export``
read it), DIR/metrics.jsonl, DIR/tensorboard/, DIR/checkpoints/ and DIR/results.json.
A resume whose ``--config`` overrides change the saved config is refused,
listing the changes, unless ``--allow_config_change`` is given.
Multi-host: add ``--coordinator HOST:PORT --num_processes N --process_id I``
on every process; under SLURM (``srun``), Open MPI or on TPU pods the flags
can be left out: the environment is detected and ``jax.distributed.initialize()``
called (``--no-distributed`` turns that off; see :mod:`mmjax.train.distributed`).
"""
from __future__ import annotations

import argparse
import os

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
    p.add_argument("experiment", nargs="?", default=None,
                   help="experiment name (see `list`) or path to a config .py file; may be left out when the "
                        "workdir holds a run (its config.json is used)")
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
    p = make_subparser(subparsers, "train", "train an experiment (resumes from the workdir's checkpoints)")
    p.add_argument("--allow_config_change", action="store_true",
                   help="resume although --config overrides change the saved config (the changes are printed)")
    return p


def base_config(args):
    """The config a command starts from: the workdir's saved run config when there is one (the
    experiment named, if any, must be the one it was trained with), else the named experiment."""
    from mmjax.train import run_record

    record = run_record.read(args.workdir) if os.path.isdir(args.workdir) or "://" in args.workdir else None
    if record is None:
        if not args.experiment:
            raise UserError(f"--workdir {args.workdir} holds no run ({run_record.FILE}): name the experiment, "
                            f"e.g. `{args.command} av_digits --workdir {args.workdir}`")
        return config_utils.load_config(args.experiment), args.experiment
    if args.experiment and record.experiment and args.experiment != record.experiment:
        raise UserError(f"--workdir {args.workdir} was trained with experiment {record.experiment!r}, not "
                        f"{args.experiment!r}; leave the experiment out to use the run's own config, or use "
                        "another --workdir")
    return config_utils.add_defaults(record.config), record.experiment


def prepare(args):
    """Distributed start-up, then the config with overrides applied."""
    from mmjax.train import distributed
    distributed.initialize(args.coordinator, args.num_processes, args.process_id, auto=args.distributed)
    if os.path.exists(args.workdir) and not os.path.isdir(args.workdir):
        raise UserError(f"--workdir {args.workdir} is a file, not a directory")
    config, args.experiment = base_config(args)
    config_utils.apply_overrides(config, getattr(args, "overrides", []))
    from experiments import modalities
    modalities.restrict(config)  # the ``modalities`` switch (unimodal baselines)
    for key in ("total_steps", "batch_size"):
        if key not in config:
            raise UserError(f"config {args.experiment!r} has no {key}")
    if "parallel" not in config or "mode" not in config.parallel or "mesh" not in config.parallel:
        raise UserError(f"config {args.experiment!r} needs parallel.mode and parallel.mesh")
    return config


def run(args) -> int:
    config = prepare(args)
    from mmjax.train import loop
    loop.train_and_evaluate(config, args.workdir, allow_config_change=args.allow_config_change,
                            experiment=args.experiment)  # data: mmjax.data.factory, the loop's default
    return 0
