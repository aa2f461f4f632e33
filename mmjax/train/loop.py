"""The training loop: ``train_and_evaluate(config, workdir)`` and ``evaluate(config, workdir)``.

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

import json
import os
import time
from typing import Any, Callable, Dict, Iterator, Optional, TextIO

import jax
import numpy as np

from mmjax import errors
from mmjax import validation
from mmjax.validation import BatchValidationError
from mmjax.train import builder, evaluation, files, resume, run_record, selection
from mmjax.train import health
from mmjax.train import init_from as init_from_lib
from mmjax.train import logging as log_lib
from mmjax.train.config_access import as_dict as _as_dict, get as _get, setting
from mmjax.train.checkpoint import CheckpointError
from mmjax.train.optim import make_schedule
from mmjax.train.logging import truncate_metrics
from mmjax.train.parallel import prefetch_to_device
from mmjax.train.preflight import WorkdirError, check_config, check_workdir  # noqa: F401  (re-exported)

DataFn = Callable[..., Iterator[Dict[str, Any]]]
DEVICE_PREFETCH = 2  # batches on their way to the device while a step runs


class TrainingDiverged(errors.RunError):
    """The loss or gradient norm became NaN/Inf with ``train.nan_policy = "stop"``."""


def _peek(it: Iterator) -> tuple:
    first = next(it)

    def chained():
        yield first
        yield from it
    return first, chained()


def _poison(batch: Dict[str, Any]) -> Dict[str, Any]:
    """A copy of ``batch`` whose first float input is NaN (the ``batch@N:nan`` fault)."""
    inputs = dict(batch["inputs"])
    for m in sorted(inputs):
        x = np.array(inputs[m])
        if x.dtype.kind == "f":
            x[...] = np.nan
            inputs[m] = x
            break
    return dict(batch, inputs=inputs)


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
    health.install_checkpoint_fault()
    info = info_fn(config)
    saved_config = config  # as given: what the run record keeps and compares
    config, held_out = selection.resolve(config, info)
    num_classes = int(info["num_classes"])
    total_steps = int(config.total_steps)
    batch_size = int(config.batch_size)
    validate_mode = setting(config, "train.validate_batches")
    finite_mode = setting(config, "train.check_finite")
    for key, value in (("validate_batches", validate_mode), ("check_finite", finite_mode)):
        if value not in ("every", "first", "off"):
            raise BatchValidationError(f"train.{key} must be 'every', 'first' or 'off', got {value!r}")
    nan_stop = setting(config, "train.nan_policy") == "stop"
    loss_name = setting(config, "loss.name")
    runner = builder.build(config, num_classes, info)
    # Recorded and compared as the ranking in effect: the config's, else the task's.
    config = builder.with_best_checkpoint(config, runner.task)
    saved_config = builder.with_best_checkpoint(saved_config, runner.task)
    model_cfg, label_kind = runner.task.input_spec(info)
    spec = validation.spec_from_config(model_cfg, info, loss=loss_name,
                                       batch_size=batch_size // jax.process_count(), label=label_kind)
    is_main = jax.process_index() == 0

    def say(line: str) -> None:
        if is_main and console is not None:
            print(line, file=console, flush=True)
    # Opened first: steps with a damaged metrics item are set aside before anything reads them.
    ckpt = builder.open_checkpoints(config, workdir, say=say)
    writer = None
    try:
        seed = int(setting(config, "seed"))
        rng = jax.random.PRNGKey(seed)
        def batches_from(step):
            it = data_fn(config, setting(config, "train_split"), global_batch_size=batch_size, seed=seed, train=True, start_step=step)
            first, it = _peek(iter(it))
            spec.validate(first, check_finite=finite_mode != "off", where=f"train batch at step {step + 1}")
            return first, it

        steps = ckpt.agreed_steps()  # process 0's list on every process
        if held_out:
            say(held_out)
        start = int(steps[-1]) if steps else 0
        example, train_iter = batches_from(start)
        state = None
        if steps:
            state, restored = ckpt.restore_latest_good(runner.abstract_state(example, rng), say,
                                                       config=config)
            if state is None:
                raise CheckpointError(f"no checkpoint in {ckpt.directory} could be read; move that directory "
                                      "away to start from scratch")
            resume.check_data_position(ckpt, int(restored), config)
            if int(restored) != start:
                start = int(restored)
                example, train_iter = batches_from(start)
            state = runner.place_restored(state)
        if is_main:
            # A resume at the last step evaluates it again: its earlier eval record (if any) goes.
            later, damaged = truncate_metrics(files.path(workdir) / "metrics.jsonl", start,
                                               drop_eval_at=start if start >= total_steps else None)
            if later:
                say(f"metrics.jsonl: dropped {later} records after step {start} (they will be replayed)")
            if damaged:
                say(f"metrics.jsonl: dropped {damaged} damaged line(s) (not a JSON record with an integer step)")
        writer = log_lib.MetricWriter(workdir, enabled=is_main, tensorboard=bool(setting(config, "tensorboard")),
                                      console=console)
        writer.write_config(run_record.to_json(config))
        spec = spec.freeze(example)
        if state is not None:
            say(f"resumed from {ckpt.directory} at step {start}")
        else:
            state = runner.create_state(example, rng)
            init_from = _as_dict(setting(config, "init_from"))
            if init_from.get("path") or init_from.get("pretrained") or init_from.get("params") is not None:
                state = init_from_lib.apply_init_from(runner, state, init_from, say=say)
        # After the restore (a change of model or optimizer is named there, array by array) and the
        # first trace (a config that cannot build a model leaves no record behind).
        resume.keep_record(workdir, saved_config, info, bool(steps), record_opts, say, task=runner.task)
        n_params = sum(int(x.size) for x in jax.tree.leaves(state.params))
        fusion = _get(_get(config, "model"), "fusion")
        say(f"model: {n_params:,} parameters" + (f", fusion {fusion}" if fusion else "")
            + f"; training on {info.get('name') or setting(config, 'data.name')} "
            f"{setting(config, 'train_split')}, selecting on {setting(config, 'eval_split')}, "
            f"{total_steps} steps of {batch_size}")
        # The checkpoints kept plus the one being written, from the state's bytes (metadata comes on top).
        keep = int(setting(config, "checkpoint.keep"))
        state_bytes = sum(int(getattr(x, "nbytes", 0)) for x in jax.tree.leaves(state))
        low = files.space_warning(ckpt.directory, state_bytes * (keep + 1), f"{keep} + 1 checkpoints of "
                                  f"{files.human_size(state_bytes)}")
        if low:
            say(low)
        return _loop(config, workdir, runner, state, ckpt, writer, say, data_fn, train_iter, spec, start,
                     stop_at, guard, nan_stop, validate_mode, finite_mode, lock)
    finally:
        ckpt.close()
        if writer is not None:
            writer.close()


def _loop(config, workdir, runner, state, ckpt, writer, say, data_fn, train_iter, spec, start,
          stop_at, guard, nan_stop, validate_mode, finite_mode, lock) -> Dict[str, Any]:
    total_steps = int(config.total_steps)
    batch_size = int(config.batch_size)
    is_main = jax.process_index() == 0
    log_every = int(setting(config, "log_every"))
    eval_every = int(setting(config, "eval_every"))
    ckpt_every = int(setting(config, "checkpoint_every"))
    eval_split = setting(config, "eval_split")
    cfg_dict = _as_dict(config)
    progress = log_lib.Progress(total_steps, batch_size, start)
    last = stop_at if stop_at is not None else total_steps
    last = min(last, total_steps)

    def do_eval(step, state):
        health.fault("during_eval", step)
        ev = evaluation.evaluate_split(runner, state, config, data_fn)
        writer.write(step, runner.task.logged_eval(ev), prefix="eval/")
        say(f"eval @ {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in evaluation.scalars(ev).items()))
        return ev

    # Non-finite steps are counted on device (no host sync per step) and read when logging.
    nonfinite = jax.numpy.zeros((), jax.numpy.float32)
    skipped_before = 0
    step = start
    eval_metrics: Optional[Dict[str, Any]] = None
    preempted = False
    def checked(batches):
        """Host-side checks of each batch, in step order, before it is put on the device."""
        for k, batch in enumerate(batches):
            s = start + k
            where = f"train batch at step {s + 1}"
            if validate_mode == "every" and s > start:
                spec.validate(batch, check_finite=False, where=where)
            if health.fault("batch", s + 1) == "nan":
                batch = _poison(batch)
            if finite_mode == "every" or (finite_mode == "first" and s == start):
                try:
                    spec.validate(batch, check_finite=True, where=where)
                except validation.BatchValidationError as e:
                    if nan_stop or "NaN/Inf" not in str(e):
                        raise
                    say(f"warning: {e}; the update of step {s + 1} will be skipped (train.nan_policy='skip')")
            yield batch

    device_batches = prefetch_to_device(checked(train_iter), runner.put_batch, size=DEVICE_PREFETCH)
    schedule = make_schedule(_as_dict(config.optim), total_steps)
    while step < last:
        if step == start:
            say(f"compiling the train step ({runner.mode}, {jax.device_count()} device(s)) ...")
            t_compile = time.perf_counter()
        state, m = runner.train_step(state, next(device_batches))
        step += 1
        if step == start + 1:
            first = runner.train_metrics(m)  # waits for the step: compile + one step
            say(f"compiled and ran step {step} in {time.perf_counter() - t_compile:.1f} s: loss {first['loss']:.4f}")
            progress.restart(step)  # rates and ETA from here on leave compilation out
        nonfinite = nonfinite + (1.0 - m["finite"].reshape(-1)[0])
        health.fault("after_step", step)
        if nan_stop or step % log_every == 0 or step == last:
            host = runner.train_metrics(m)
            if host["finite"] < 1 and nan_stop:
                raise TrainingDiverged(
                    f"loss or gradient norm is not finite at step {step} (loss={host['loss']}, "
                    f"grad_norm={host['grad_norm']}); nothing of that step was applied or saved; the last good "
                    f"checkpoint is step {ckpt.latest_step()} in {ckpt.directory}"
                )
            if step % log_every == 0 or step == last:
                speed = progress.update(step)
                record = {k: v for k, v in host.items() if k not in ("finite", "weight")}
                record["learning_rate"] = float(schedule(step - 1))  # the rate of this step's update
                record.update(speed)
                skipped = int(jax.device_get(nonfinite))
                record["skipped_nonfinite"] = skipped
                if skipped > skipped_before:
                    say(f"warning: {skipped - skipped_before} update(s) skipped for non-finite loss or gradients "
                        f"up to step {step}")
                    skipped_before = skipped
                writer.write(step, record)
                say(log_lib.format_line(step, total_steps, host, speed))
        preempted = guard.requested(step)
        # The final eval runs after the final checkpoint is committed (below the loop), so a hang or a
        # kill there loses no training. A preemption on an eval step still runs that eval first: its
        # result is written and ranks the checkpoint saved at that step.
        evaluated = bool(eval_every and step % eval_every == 0) and step < total_steps
        t0 = time.perf_counter()
        if evaluated:
            eval_metrics = do_eval(step, state)
            # SIGTERM during the eval: save this step (with its eval) rather than train one more.
            preempted = preempted or (jax.process_count() == 1 and guard.flag.is_set())
        if (ckpt_every and step % ckpt_every == 0) or step == last or preempted:
            resume.check_lease(lock, ckpt)
            writer.sync()  # object stores: the logs up to this step are stored before its checkpoint
            ckpt.save(step, runner.host_state(state), config=cfg_dict,
                      metrics=evaluation.scalars(eval_metrics) if evaluated and eval_metrics else None,
                      force=True)
            health.fault("after_save", step)
        progress.exclude(time.perf_counter() - t0)
        if preempted:
            ckpt.wait()
            say(f"preempted ({guard.signal_name or 'preemption notice'}): saved checkpoint {step} in "
                f"{ckpt.directory}; run the same command again to resume")
            return {"step": step, "stopped_at": step, "preempted": True}
    ckpt.wait()
    if step >= total_steps:
        # Also the eval owed by a run killed during it: the resume lands here at the last step.
        eval_metrics = do_eval(step, state)
        ckpt.attach_metrics(step, evaluation.scalars(eval_metrics))
        results = {"step": step, "eval_split": eval_split, **eval_metrics}
        test = evaluation.test_of_selected(runner, state, step, ckpt, config, data_fn)
        if test is not None:
            results["test"] = test
            say(f"test ({test['split']}, checkpoint {test['step']} selected on {eval_split}): "
                + ", ".join(f"{k} {v:.4f}" for k, v in evaluation.scalars(test).items() if k != "step"))
        if is_main:
            files.write_text(files.path(workdir) / "results.json", json.dumps(log_lib._json_value(results), indent=2))
        return results
    return {"step": step, "stopped_at": step}


