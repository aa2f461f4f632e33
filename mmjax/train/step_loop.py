"""The step loop of a run: host-checked batches -> the compiled step -> logs, evals, checkpoints.

:func:`run_steps` takes a run that :mod:`mmjax.train.loop` has set up (model,
state, checkpoints, writer, the train iterator at ``start``) to its last step.
The test-only fault points (:mod:`mmjax.train.faults`) wrap the step, the
batches, the eval and the save once, before the loop; a run without
``MMJAX_FAULT`` runs the loop body below and nothing else.
"""
from __future__ import annotations

import dataclasses
import json
import time
from typing import Any, Callable, Dict, Iterable, Iterator, Optional

import jax

from mmjax import errors
from mmjax import validation
from mmjax.data.global_batch import prefetch_to_device
from mmjax.train import evaluation, faults, files, resume
from mmjax.train import logging as log_lib
from mmjax.train.config_access import as_dict, setting
from mmjax.train.optim import make_schedule

DEVICE_PREFETCH = 2  # batches on their way to the device while a step runs


class TrainingDiverged(errors.RunError):
    """The loss or gradient norm became NaN/Inf with ``train.nan_policy = "stop"``."""


@dataclasses.dataclass
class Run:
    """What the step loop works with, set up by :func:`mmjax.train.loop.train_and_evaluate`.

    ``runner``: the parallel runner (:class:`mmjax.train.parallel.Runner`); ``ckpt``: the
    run's :class:`mmjax.train.checkpoint.Checkpointer`; ``writer``: its
    :class:`mmjax.train.logging.MetricWriter`; ``spec``: the frozen batch spec the batches
    are checked against; ``guard``: the preemption guard; ``lock``: the workdir lock or lease.
    """

    config: Any
    workdir: str
    runner: Any
    ckpt: Any
    writer: Any
    say: Callable[[str], None]
    data_fn: Callable[..., Iterator[Dict[str, Any]]]
    spec: Any
    guard: Any
    lock: Any
    stop_at: Optional[int] = None


def checked_batches(run: Run, batches: Iterable[Dict[str, Any]], start: int) -> Iterator[Dict[str, Any]]:
    """Host-side checks of each batch (``train.validate_batches`` / ``train.check_finite``), in step order.

    The first batch was validated in full when the run started; a non-finite batch under
    ``nan_policy="skip"`` is reported and passed on (the step skips its update).
    """
    validate_mode = setting(run.config, "train.validate_batches")
    finite_mode = setting(run.config, "train.check_finite")
    nan_stop = setting(run.config, "train.nan_policy") == "stop"
    for k, batch in enumerate(batches):
        s = start + k
        where = f"train batch at step {s + 1}"
        if validate_mode == "every" and s > start:
            run.spec.validate(batch, check_finite=False, where=where)
        if finite_mode == "every" or (finite_mode == "first" and s == start):
            try:
                run.spec.validate(batch, check_finite=True, where=where)
            except validation.BatchValidationError as e:
                if nan_stop or "NaN/Inf" not in str(e):
                    raise
                run.say(f"warning: {e}; the update of step {s + 1} will be skipped (train.nan_policy='skip')")
        yield batch


class TrainLog:
    """Train metrics of the logged steps: loss line, learning rate, speed and skipped updates.

    Non-finite steps are counted on the device (no host sync per step) and read when logging.
    """

    def __init__(self, run: Run, start: int):
        self.run, self.total = run, int(run.config.total_steps)
        self.every = int(setting(run.config, "log_every"))
        self.nan_stop = setting(run.config, "train.nan_policy") == "stop"
        self.progress = log_lib.Progress(self.total, int(run.config.batch_size), start)
        self.schedule = make_schedule(as_dict(run.config.optim), self.total)
        self.nonfinite = jax.numpy.zeros((), jax.numpy.float32)
        self.skipped_before = 0

    def after(self, step: int, metrics: Dict[str, Any], last: int) -> None:
        """Counts a non-finite step; on a log step (or every step under ``nan_policy="stop"``) reads it."""
        self.nonfinite = self.nonfinite + (1.0 - metrics["finite"].reshape(-1)[0])
        logged = step % self.every == 0 or step == last
        if not (self.nan_stop or logged):
            return
        host = self.run.runner.train_metrics(metrics)
        if host["finite"] < 1 and self.nan_stop:
            ckpt = self.run.ckpt
            raise TrainingDiverged(
                f"loss or gradient norm is not finite at step {step} (loss={host['loss']}, "
                f"grad_norm={host['grad_norm']}); nothing of that step was applied or saved; the last good "
                f"checkpoint is step {ckpt.latest_step()} in {ckpt.directory}")
        if logged:
            self._write(step, host)

    def _write(self, step: int, host: Dict[str, float]) -> None:
        speed = self.progress.update(step)
        record = {k: v for k, v in host.items() if k not in ("finite", "weight")}
        record["learning_rate"] = float(self.schedule(step - 1))  # the rate of this step's update
        record.update(speed)
        skipped = int(jax.device_get(self.nonfinite))
        record["skipped_nonfinite"] = skipped
        if skipped > self.skipped_before:
            self.run.say(f"warning: {skipped - self.skipped_before} update(s) skipped for non-finite loss or "
                         f"gradients up to step {step}")
            self.skipped_before = skipped
        self.run.writer.write(step, record)
        self.run.say(log_lib.format_line(step, self.total, host, speed))


def run_steps(run: Run, state: Any, train_iter: Iterable[Dict[str, Any]], start: int) -> Dict[str, Any]:
    """Trains from step ``start`` to ``total_steps`` (or ``stop_at``, or a preemption); -> the results."""
    config, runner, say = run.config, run.runner, run.say
    total_steps = int(config.total_steps)
    eval_every, ckpt_every = int(setting(config, "eval_every")), int(setting(config, "checkpoint_every"))
    last = min(run.stop_at if run.stop_at is not None else total_steps, total_steps)
    do_eval = faults.before(lambda step, state: _evaluate(run, step, state), "during_eval")
    save = faults.after(lambda step, state, metrics: _save(run, step, state, metrics), "after_save")
    train_step = faults.after_each_call(runner.train_step, "after_step", start)
    batches = faults.poison_batches(train_iter, start)
    device_batches = prefetch_to_device(checked_batches(run, batches, start), runner.put_batch,
                                        size=DEVICE_PREFETCH)
    log = TrainLog(run, start)
    step, eval_metrics = start, None
    while step < last:
        if step == start:
            say(f"compiling the train step ({runner.mode}, {jax.device_count()} device(s)) ...")
            t_compile = time.perf_counter()
        state, m = train_step(state, next(device_batches))
        step += 1
        if step == start + 1:
            first = runner.train_metrics(m)  # waits for the step: compile + one step
            say(f"compiled and ran step {step} in {time.perf_counter() - t_compile:.1f} s: loss {first['loss']:.4f}")
            log.progress.restart(step)  # rates and ETA from here on leave compilation out
        log.after(step, m, last)
        preempted = run.guard.requested(step)
        # The final eval runs after the final checkpoint is committed (in _finish), so a hang or a
        # kill there loses no training. A preemption on an eval step still runs that eval first: its
        # result is written and ranks the checkpoint saved at that step.
        evaluated = bool(eval_every and step % eval_every == 0) and step < total_steps
        t0 = time.perf_counter()
        if evaluated:
            eval_metrics = do_eval(step, state)
            # SIGTERM during the eval: save this step (with its eval) rather than train one more.
            preempted = preempted or (jax.process_count() == 1 and run.guard.flag.is_set())
        if (ckpt_every and step % ckpt_every == 0) or step == last or preempted:
            save(step, state, eval_metrics if evaluated else None)
        log.progress.exclude(time.perf_counter() - t0)
        if preempted:
            run.ckpt.wait()
            say(f"preempted ({run.guard.signal_name or 'preemption notice'}): saved checkpoint {step} in "
                f"{run.ckpt.directory}; run the same command again to resume")
            return {"step": step, "stopped_at": step, "preempted": True}
    run.ckpt.wait()
    if step >= total_steps:
        return _finish(run, state, step, do_eval)
    return {"step": step, "stopped_at": step}


def _evaluate(run: Run, step: int, state: Any) -> Dict[str, Any]:
    ev = evaluation.evaluate_split(run.runner, state, run.config, run.data_fn)
    run.writer.write(step, run.runner.task.logged_eval(ev), prefix="eval/")
    run.say(f"eval @ {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in evaluation.scalars(ev).items()))
    return ev


def _save(run: Run, step: int, state: Any, eval_metrics: Optional[Dict[str, Any]]) -> None:
    resume.check_lease(run.lock, run.ckpt)
    run.writer.sync()  # object stores: the logs up to this step are stored before its checkpoint
    run.ckpt.save(step, run.runner.host_state(state), config=as_dict(run.config),
                  metrics=evaluation.scalars(eval_metrics) if eval_metrics else None, force=True)


def _finish(run: Run, state: Any, step: int, do_eval: Callable) -> Dict[str, Any]:
    """The final eval (also the one owed by a run killed during it: its resume lands here), the test
    of the selected checkpoint and ``results.json``."""
    eval_split = setting(run.config, "eval_split")
    eval_metrics = do_eval(step, state)
    run.ckpt.attach_metrics(step, evaluation.scalars(eval_metrics))
    results = {"step": step, "eval_split": eval_split, **eval_metrics}
    test = evaluation.test_of_selected(run.runner, state, step, run.ckpt, run.config, run.data_fn)
    if test is not None:
        results["test"] = test
        run.say(f"test ({test['split']}, checkpoint {test['step']} selected on {eval_split}): "
                + ", ".join(f"{k} {v:.4f}" for k, v in evaluation.scalars(test).items() if k != "step"))
    if jax.process_index() == 0:
        files.write_text(files.path(run.workdir) / "results.json",
                         json.dumps(log_lib._json_value(results), indent=2))
    return results
