"""A training run: ``train_and_evaluate(config, workdir)`` sets the run up and hands it to the step loop.

This file: the workdir lock, the model and checkpoints, the restore (or fresh start), the run
record and logs; :mod:`mmjax.train.step_loop` then trains to the last step. Evaluating a finished
run is :func:`mmjax.train.evaluation.evaluate`.

Config keys read here (defaults: :mod:`mmjax.train.defaults`):
``seed, total_steps, batch_size, log_every, eval_every, checkpoint_every,
eval_steps, eval_split, train_split, data, model, loss, optim, train, parallel, checkpoint,
init_from, tensorboard``.

A workdir that already holds checkpoints is resumed from its latest one: the
state (params, optimizer, step, RNG) is restored and the data pipeline
restarts at the saved step, so an interrupted run continues exactly where it
stopped (on CPU it reproduces the uninterrupted run's losses bit for bit).

``workdir`` may be local or an object-store URL (``gs://bucket/run``): every
file of the run goes through :mod:`mmjax.train.files` (``etils.epath``).
"""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, Iterator, Optional, TextIO

import jax

from mmjax import validation
from mmjax.validation import BatchValidationError
from mmjax.train import builder, files, resume, run_record, selection, step_loop
from mmjax.train import health
from mmjax.train import init_from as init_from_lib
from mmjax.train import logging as log_lib
from mmjax.train.config_access import as_dict as _as_dict, get as _get, setting
from mmjax.train.checkpoint import CheckpointError
from mmjax.train.logging import truncate_metrics
from mmjax.train.preflight import WorkdirError, check_config, check_workdir  # noqa: F401  (re-exported)
from mmjax.train.step_loop import DEVICE_PREFETCH, TrainingDiverged  # noqa: F401  (re-exported)

DataFn = Callable[..., Iterator[Dict[str, Any]]]


def _peek(it: Iterator) -> tuple:
    first = next(it)

    def chained():
        yield first
        yield from it
    return first, chained()


def train_and_evaluate(config: Any, workdir: str, *, data_fn: Optional[DataFn] = None,
                       info_fn: Optional[Callable[[Any], Dict[str, Any]]] = None,
                       console: Optional[TextIO] = log_lib.STDOUT, stop_at: Optional[int] = None,
                       allow_config_change: bool = False, experiment: str = "") -> Dict[str, Any]:
    """Trains ``config`` in ``workdir`` (resuming from its checkpoints) and returns the final eval metrics.

    Args:
      data_fn: ``(config, split, *, global_batch_size, seed, train, start_step)``
        -> iterator of this process's numpy batches (default:
        :func:`mmjax.data.factory.make_data`).
      info_fn: config -> {"num_classes": C, ...} (default: :func:`mmjax.data.factory.data_info`).
      stop_at: leave the loop after this step (with a checkpoint), as a
        preempted job would; a later call on the same workdir resumes.
      allow_config_change: resume although ``config`` differs from the one
        the workdir was trained with (``WORKDIR/config.json``, see
        :mod:`mmjax.train.run_record`); the differences are printed either way.
      experiment: the experiment name or file, kept in the run record.

    Model selection (see :mod:`mmjax.train.selection`): train-time evals and the
    best checkpoint use ``config.eval_split``; at the end the selected
    checkpoint is evaluated once on ``config.test_split`` (``results["test"]``).

    Reliability (see RELIABILITY.md): the workdir is locked against a second
    run; the first batch is validated on the host against the spec of the
    config and dataset before anything compiles (later batches per
    ``train.validate_batches`` / ``train.check_finite``); the newest checkpoint
    that reads back and matches its checksums is restored (a damaged one is
    reported and set aside); SIGTERM saves a checkpoint at the next step
    boundary (after that step's eval, on an eval step) and returns
    ``{"step", "stopped_at", "preempted": True}``; the final checkpoint is
    saved before the final eval.

    Writes WORKDIR/config.json, WORKDIR/metrics.jsonl, WORKDIR/tensorboard/,
    WORKDIR/checkpoints/ and (when training finished) WORKDIR/results.json.
    """
    if data_fn is None or info_fn is None:
        from mmjax.data import factory  # imported on use: importing the loop does not load the dataset readers
        data_fn = data_fn or factory.make_data
        info_fn = info_fn or factory.data_info
    check_workdir(workdir)
    check_config(config)
    is_main = jax.process_index() == 0
    console = log_lib.resolve_console(console)
    lock = health.workdir_lock(workdir, say=lambda line: console and print(line, file=console, flush=True),
                               lease_s=setting(config, "workdir_lease_s"))
    if is_main:
        lock.acquire()
    try:
        with health.PreemptionGuard() as guard:
            return _train(config, workdir, data_fn, info_fn, console, stop_at, guard, lock,
                          (allow_config_change, experiment))
    except Exception as e:  # a full or read-only disk met by Orbax, a log or a report: one StorageError
        fault = files.storage_fault(e, fallback=workdir)
        if fault is None or fault is e:
            raise
        if is_main:
            files.remove_partial_saves(os.path.join(workdir, "checkpoints"))
        raise fault from e
    finally:
        lock.release()


def _train(config, workdir, data_fn, info_fn, console, stop_at, guard, lock, record_opts) -> Dict[str, Any]:
    info = info_fn(config)
    saved_config = config  # as given: what the run record keeps and compares
    config, held_out = selection.resolve(config, info)
    for key in ("validate_batches", "check_finite"):
        if setting(config, f"train.{key}") not in ("every", "first", "off"):
            raise BatchValidationError(f"train.{key} must be 'every', 'first' or 'off', "
                                       f"got {setting(config, f'train.{key}')!r}")
    runner = builder.build(config, int(info["num_classes"]), info)
    # Recorded and compared as the ranking in effect: the config's, else the task's.
    config = builder.with_best_checkpoint(config, runner.task)
    saved_config = builder.with_best_checkpoint(saved_config, runner.task)
    model_cfg, label_kind = runner.task.input_spec(info)
    spec = validation.spec_from_config(model_cfg, info, loss=setting(config, "loss.name"),
                                       batch_size=int(config.batch_size) // jax.process_count(), label=label_kind)
    is_main = jax.process_index() == 0

    def say(line: str) -> None:
        if is_main and console is not None:
            print(line, file=console, flush=True)
    # Opened first: steps with a damaged metrics item are set aside before anything reads them.
    ckpt = builder.open_checkpoints(config, workdir, say=say)
    writer = None
    try:
        if held_out:
            say(held_out)
        rng = jax.random.PRNGKey(int(setting(config, "seed")))
        state, start, example, train_iter, resumed = _restore_or_start(config, runner, ckpt, spec, data_fn, rng, say)
        if is_main:
            _truncate_logs(workdir, start, int(config.total_steps), say)
        writer = log_lib.MetricWriter(workdir, enabled=is_main, tensorboard=bool(setting(config, "tensorboard")),
                                      console=console)
        writer.write_config(run_record.to_json(config))
        spec = spec.freeze(example)
        if resumed:
            say(f"resumed from {ckpt.directory} at step {start}")
        else:
            state = runner.create_state(example, rng)
            init_from = _as_dict(setting(config, "init_from"))
            if init_from.get("path") or init_from.get("pretrained") or init_from.get("params") is not None:
                state = init_from_lib.apply_init_from(runner, state, init_from, say=say)
        # After the restore (a change of model or optimizer is named there, array by array) and the
        # first trace (a config that cannot build a model leaves no record behind).
        resume.keep_record(workdir, saved_config, info, resumed, record_opts, say, task=runner.task)
        _describe(config, info, state, ckpt, say)
        run = step_loop.Run(config=config, workdir=workdir, runner=runner, ckpt=ckpt, writer=writer, say=say,
                            data_fn=data_fn, spec=spec, guard=guard, lock=lock, stop_at=stop_at)
        return step_loop.run_steps(run, state, train_iter, start)
    finally:
        ckpt.close()
        if writer is not None:
            writer.close()


def _restore_or_start(config, runner, ckpt, spec, data_fn, rng, say):
    """-> (restored state or None, start step, first batch, train iterator from there, resumed).

    The newest checkpoint that reads back is restored; the data pipeline restarts at its step.
    """
    finite_mode = setting(config, "train.check_finite")

    def batches_from(step):
        it = data_fn(config, setting(config, "train_split"), global_batch_size=int(config.batch_size),
                     seed=int(setting(config, "seed")), train=True, start_step=step)
        first, it = _peek(iter(it))
        spec.validate(first, check_finite=finite_mode != "off", where=f"train batch at step {step + 1}")
        return first, it

    steps = ckpt.agreed_steps()  # process 0's list on every process
    start = int(steps[-1]) if steps else 0
    example, train_iter = batches_from(start)
    if not steps:
        return None, start, example, train_iter, False
    state, restored = ckpt.restore_latest_good(runner.abstract_state(example, rng), say, config=config)
    if state is None:
        raise CheckpointError(f"no checkpoint in {ckpt.directory} could be read; move that directory "
                              "away to start from scratch")
    resume.check_data_position(ckpt, int(restored), config)
    if int(restored) != start:
        start = int(restored)
        example, train_iter = batches_from(start)
    return runner.place_restored(state), start, example, train_iter, True


def _truncate_logs(workdir, start: int, total_steps: int, say) -> None:
    """metrics.jsonl back to step ``start``; a resume at the last step evaluates it again, so its eval goes."""
    later, damaged = truncate_metrics(files.path(workdir) / "metrics.jsonl", start,
                                      drop_eval_at=start if start >= total_steps else None)
    if later:
        say(f"metrics.jsonl: dropped {later} records after step {start} (they will be replayed)")
    if damaged:
        say(f"metrics.jsonl: dropped {damaged} damaged line(s) (not a JSON record with an integer step)")


def _describe(config, info, state, ckpt, say) -> None:
    """The run's one-line summary, and a warning when the checkpoints may not fit on the disk."""
    n_params = sum(int(x.size) for x in jax.tree.leaves(state.params))
    fusion = _get(_get(config, "model"), "fusion")
    say(f"model: {n_params:,} parameters" + (f", fusion {fusion}" if fusion else "")
        + f"; training on {info.get('name') or setting(config, 'data.name')} "
        f"{setting(config, 'train_split')}, selecting on {setting(config, 'eval_split')}, "
        f"{int(config.total_steps)} steps of {int(config.batch_size)}")
    # The checkpoints kept plus the one being written, from the state's bytes (metadata comes on top).
    keep = int(setting(config, "checkpoint.keep"))
    state_bytes = sum(int(getattr(x, "nbytes", 0)) for x in jax.tree.leaves(state))
    low = files.space_warning(ckpt.directory, state_bytes * (keep + 1), f"{keep} + 1 checkpoints of "
                              f"{files.human_size(state_bytes)}")
    if low:
        say(low)
