"""What a run checks when it continues in a workdir: its run record against the config, the
checkpoint's data position against the batch size, and (object stores) that it still holds the lease."""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax

from mmjax.train import builder, health, run_record
from mmjax.train.checkpoint import Checkpointer, CheckpointError


def keep_record(workdir, config, info, resuming: bool, record_opts, say, task: Optional[Any] = None) -> None:
    """Writes the run record on a fresh start; on resume, compares ``config`` with it first.

    ``task``: the run's task; the record is compared with the checkpoint ranking it had in
    effect (:func:`builder.with_best_checkpoint`), also where it left that to the task.
    """
    allow, experiment = record_opts
    saved = run_record.read(workdir)
    if saved is not None and resuming:
        if task is not None:
            saved = dataclasses.replace(saved, config=builder.with_best_checkpoint(saved.config, task))
        changed = run_record.check_resume(saved, config, allow_change=allow)
        if not changed:
            return
        say(f"config changes since {run_record.FILE} ({'allowed' if allow else 'logging only'}): "
            + "; ".join(changed))
        experiment = experiment or saved.experiment
    if jax.process_index() == 0:
        run_record.write(workdir, config, info, experiment)


def check_lease(lock, ckpt: Checkpointer) -> None:
    """Stops every process (WorkdirBusyError) when process 0 lost the workdir lease to another run."""
    if isinstance(lock, health.WorkdirLock):
        return  # a local lock cannot be lost
    lost = int(bool(lock.lost)) if jax.process_index() == 0 else 0
    if jax.process_count() > 1:
        lost = ckpt.agreement.decision(lost)
    if lost:
        lock.check()
        raise health.WorkdirBusyError("process 0 lost the workdir lease to another run; stopping without saving")


def check_data_position(ckpt: Checkpointer, step: int, config: Any) -> None:
    """The data position of a checkpoint is its step in units of the global batch it was written with:
    resuming with another batch size would repeat or skip examples, so it is refused."""
    saved = (ckpt.metadata(step).get("config") or {}).get("batch_size")
    if saved is not None and int(saved) != int(config.batch_size):
        raise CheckpointError(
            f"checkpoint {step} in {ckpt.directory} was written with batch_size {saved}, this run has "
            f"{int(config.batch_size)}: its data position (step {step} of {saved} examples) does not map to "
            f"another batch size; resume with --config.batch_size={saved}, or train in a new workdir "
            f"(--config.init_from.path=... keeps the weights)")
