"""Verified restores: read a step back whole, check it, fall back past damaged ones and set them aside.

:class:`VerifiedRestore` holds the restore side of
:class:`mmjax.train.checkpoint.Checkpointer` (which it is mixed into). A
step is trusted only once it has been read back whole, its arrays and meta
match the checksums saved with it (:mod:`mmjax.train.checksum`) and its
params are finite; a damaged one is moved to ``DIR_corrupt/`` so the step can
be written again. :func:`load_params` reads a directory of another run
without a CheckpointManager (nothing is moved there).
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import serialization

from mmjax.train import agreement as agreement_lib
from mmjax.train import checkpoint_items as items
from mmjax.train import checksum, faults, files
from mmjax.train.checkpoint_fit import CheckpointError, CheckpointMismatchError, mismatch, shapes
from mmjax.train.state import TrainState

PyTree = Any
Say = Optional[Callable[[str], None]]


class VerifiedRestore:
    """Restore methods of :class:`mmjax.train.checkpoint.Checkpointer`.

    Uses its ``manager`` (``ocp.CheckpointManager``), ``directory``, ``agreement``,
    ``say`` and ``_probe`` attributes, and its ``latest_step``, ``all_steps`` and
    ``metadata`` methods.
    """

    manager: ocp.CheckpointManager
    directory: str
    agreement: agreement_lib.Agreement
    say: Callable[[str], None]
    _probe: Optional[ocp.CheckpointManager]

    def restore(self, abstract_state: TrainState, step: Optional[int] = None,
                config: Optional[Mapping[str, Any]] = None) -> TrainState:
        """Restores into the structure, dtypes and shardings of ``abstract_state`` (ShapeDtypeStructs).

        The step is read back whole and verified first (see :meth:`restore_latest_good`).
        Raises :class:`CheckpointMismatchError` (see :meth:`check_fits`) when the
        checkpoint holds other arrays than ``abstract_state``, and
        :class:`checksum.DamagedCheckpointError` when it cannot be read, its bytes
        differ from those saved or its params are not finite (nothing is moved:
        :meth:`set_aside` does that).
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        return self._agreed_restore(abstract_state, int(step), config)

    def restore_latest_good(self, abstract_state: TrainState, say: Say = None,
                            config: Optional[Mapping[str, Any]] = None) -> Tuple[Optional[TrainState], Optional[int]]:
        """Restores the newest checkpoint that reads back whole and verified, newest first; -> (state, step)
        or (None, None).

        Orbax only ever exposes finalised steps (a save is written to a
        temporary directory and renamed when complete), so a run killed while
        saving leaves the previous step as the latest. A finalised checkpoint
        can still be damaged afterwards (a truncated copy, a disk error, a
        flipped byte that decodes into other numbers): a step that cannot be
        read, whose arrays or meta item differ from the checksums saved with it
        (:mod:`mmjax.train.checksum`) or whose params are not finite is
        reported through ``say``, moved to ``checkpoints_corrupt/`` next to the
        checkpoint directory (so the step can be written again) and the next
        older one is tried.

        A readable checkpoint of another model or optimizer is not damage: it
        raises :class:`CheckpointMismatchError` (naming the arrays, and with
        ``config`` the config keys, that differ) and nothing is moved.

        Several processes (:mod:`mmjax.train.agreement`): the steps tried are
        process 0's; process 0 alone reads each candidate back whole (through a
        manager of its own, so no other process is waited for), verifies it and
        broadcasts its verdict; all then restore the step it found good, or all
        raise. Process 0 holds one host copy of the state while it checks.
        """
        say = say or self.say
        for step in self.agreement.share(sorted(self.all_steps(), reverse=True)):
            try:
                return self._agreed_restore(abstract_state, step, config), step
            except checksum.DamagedCheckpointError as e:
                self.set_aside(step, e.__cause__ or e, say)
        return None, None

    def array_shapes(self, step: int) -> Dict[str, Tuple[int, ...]]:
        """{"params/fusion/kernel": shape, ...} of step ``step`` as written on disk (reads metadata only)."""
        return self._shapes_on_disk(self.manager, step)

    def check_fits(self, abstract_state: TrainState, step: int,
                   config: Optional[Mapping[str, Any]] = None) -> None:
        """Raises :class:`CheckpointMismatchError` when step ``step`` cannot restore into ``abstract_state``.

        Compares array paths and shapes (dtypes are cast on restore). With
        ``config``, the error also names the config keys that differ from the
        config saved with the checkpoint.
        """
        self._check_shapes(self.array_shapes(step), abstract_state, step, config)

    def set_aside(self, step: int, error: Exception, say: Say = None) -> None:
        """Moves damaged step ``step`` aside (:meth:`quarantine`) and says why (every process calls it)."""
        moved = self.quarantine(step)
        (say or self.say)(set_aside_line(self.directory, step, error, moved))

    def quarantine(self, step: int) -> str:
        """Moves step ``step`` out of the checkpoint directory (process 0 only); returns where it went."""
        self.manager.wait_until_finished()
        moved = move_aside(self.directory, step) if self.agreement.is_main else "checkpoints_corrupt (by process 0)"
        self.agreement.barrier(f"mmjax_quarantine_{step}")
        self.manager.reload()
        return moved

    def _agreed_restore(self, abstract_state: TrainState, step: int,
                        config: Optional[Mapping[str, Any]]) -> TrainState:
        """Process 0 reads ``step`` back whole and checks it; all restore it, or all raise."""
        agree = self.agreement
        verdict, state, error = agreement_lib.OK, None, None
        if agree.is_main:
            verdict, state, error = self._try_restore(abstract_state, step, config)
        verdict = agree.decision(verdict)
        if verdict == agreement_lib.MISMATCH:
            raise error or CheckpointMismatchError(
                f"checkpoint {step} in {self.directory} does not fit this model (found by process 0)")
        if verdict == agreement_lib.DAMAGED:
            error = error or CheckpointError("unreadable for process 0")
            raise checksum.DamagedCheckpointError(
                f"checkpoint {step} in {self.directory} is damaged ({checksum.reason(error)})") from error
        if state is None:  # several processes: every one restores the step process 0 read back
            state = self._restore(abstract_state, step)
        return state

    def _try_restore(self, abstract_state: TrainState, step: int, config: Optional[Mapping[str, Any]]):
        """Reads ``step`` back whole and verifies it: -> (verdict, state or None, error or None).

        One process: restores it (the state is returned). Several (process 0
        only): reads every array into host memory through :meth:`_reader`,
        and returns no state. ``MMJAX_FAULT=restore@N:damaged`` makes step N
        unreadable (tests).
        """
        if faults.fault("restore", step) == "damaged":
            return agreement_lib.DAMAGED, None, CheckpointError("unreadable (MMJAX_FAULT restore:damaged)")
        reader = self._reader()
        try:
            on_disk = self._shapes_on_disk(reader, step)
        except Exception as e:  # noqa: BLE001 - any read failure means "do not trust this step"
            return agreement_lib.DAMAGED, None, e
        try:
            self._check_shapes(on_disk, abstract_state, step, config)
        except CheckpointMismatchError as e:
            return agreement_lib.MISMATCH, None, e
        try:
            state = None
            if reader is self.manager:
                state = self._restore(abstract_state, step)
                whole = serialization.to_state_dict(state)
            else:
                host = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), serialization.to_state_dict(abstract_state))
                whole = reader.restore(step, args=items.state_args(host))[items.STATE]
            meta = reader.restore(step, args=items.meta_args())[items.META]
            if not checksum.check(files.path(self.directory) / str(step), whole, dict(meta)):
                self.say(f"checkpoint {step} in {self.directory} has no checksums (written before they were "
                         "recorded): restored unverified")
        except Exception as e:  # noqa: BLE001
            return agreement_lib.DAMAGED, None, e
        return agreement_lib.OK, state, None

    def _restore(self, abstract_state: TrainState, step: int) -> TrainState:
        target = serialization.to_state_dict(abstract_state)
        restored = self.manager.restore(step, args=items.state_args(target))
        return serialization.from_state_dict(abstract_state, restored[items.STATE])

    def _shapes_on_disk(self, manager: ocp.CheckpointManager, step: int) -> Dict[str, Tuple[int, ...]]:
        tree = manager.item_metadata(step)[items.STATE]
        if tree is None:
            raise CheckpointError(f"checkpoint {step} in {self.directory} has no readable state metadata")
        return shapes(tree)

    def _check_shapes(self, on_disk: Mapping[str, Tuple[int, ...]], abstract_state: TrainState, step: int,
                      config: Optional[Mapping[str, Any]]) -> None:
        error = mismatch(on_disk, shapes(serialization.to_state_dict(abstract_state)), directory=self.directory,
                         step=step, config=config, saved_config=lambda: self.metadata(step).get("config"))
        if error is not None:
            raise error

    def _reader(self) -> ocp.CheckpointManager:
        """The manager process 0 checks candidates with: the run's own with one process; with
        several, a read-only one whose only active process is 0 (its reads wait for no one)."""
        if self.agreement.count == 1:
            return self.manager
        if self._probe is None:
            options = ocp.CheckpointManagerOptions(
                read_only=True, multiprocessing_options=ocp.options.MultiprocessingOptions(
                    primary_host=0, active_processes={0}))
            self._probe = ocp.CheckpointManager(files.path(self.directory), options=options,
                                                handler_registry=items.handler_registry())
        self._probe.reload()
        return self._probe


def move_aside(directory: str, step: int) -> str:
    """Moves ``DIR/step`` to ``DIR_corrupt/step-<time>-<pid>`` (so the step can be written again)."""
    dest = files.path(directory.rstrip("/" + os.sep) + "_corrupt") / (
        f"{step}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    files.move_tree(files.path(directory) / str(step), dest)
    return os.fspath(dest)


def set_aside_line(directory: str, step: int, error: BaseException, moved: str) -> str:
    what = "is damaged" if isinstance(error, checksum.DamagedCheckpointError) else "is unreadable"
    return f"checkpoint {step} in {directory} {what} ({checksum.reason(error)}); moved to {moved}, trying an older one"


def set_aside_unreadable_metrics(directory: str, agreement: agreement_lib.Agreement, say: Callable[[str], None]):
    """Process 0 moves aside the steps whose metrics item is damaged; every process waits for it.

    Run before a CheckpointManager opens ``directory``: Orbax reads every step's metrics item there.
    """
    if agreement.is_main:
        for step, reason in sorted(checksum.damaged_metrics(directory).items()):
            moved = move_aside(directory, step)
            say(set_aside_line(directory, step, checksum.DamagedCheckpointError(reason), moved))
    agreement.barrier("mmjax_metrics_scan")


def load_params(path: str, step: Optional[int] = None, say: Say = None) -> PyTree:
    """The ``params`` tree of a checkpoint directory written by :class:`Checkpointer`, verified.

    ``path`` is a run's checkpoint directory (``WORKDIR/checkpoints``) or a
    workdir; the newest step that reads back whole and matches its checksums is
    used (a damaged one is reported through ``say`` and skipped, not moved: the
    directory belongs to another run) unless ``step`` is given, which must be good.
    Reads each step on its own, without a CheckpointManager (which would read
    every step's metrics item first, and fail on a damaged one).
    """
    path = files.path(path)
    if (path / "checkpoints").is_dir():
        path = path / "checkpoints"
    if not path.is_dir():
        raise CheckpointError(f"init_from: no checkpoint directory at {path}")
    found = sorted((m.step for m in ocp.path.step.standard_name_format().find_all(path)), reverse=True)
    candidates = found if step is None else [int(step)]
    if not candidates or candidates[0] not in found:
        raise CheckpointError(f"init_from: no checkpoint {'' if step is None else f'{step} '}in {path}")
    state = checksum.newest_good_state(path, candidates, must=step is not None, say=say)
    return jax.tree.map(lambda x: jax.device_get(x), state["params"])
