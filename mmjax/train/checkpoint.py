"""Orbax checkpoints: the last K steps plus the best by an eval metric.

Layout: ``WORKDIR/checkpoints/<step>/{state, meta, checksums[, metrics]}`` where
``state`` is the TrainState as a state dict (params, batch_stats, opt_state, step,
rng), ``meta`` is JSON: the step (= data pipeline position), the config and the
metrics of that step, ``checksums`` the crc32 record of :mod:`mmjax.train.checksum`
and ``metrics`` Orbax's ranking item. A run pointed at a workdir with checkpoints restores the
latest one and continues from its step.

``directory`` may be local or an object-store URL (``gs://bucket/run/checkpoints``):
paths go through :mod:`mmjax.train.files` (``etils.epath``, as in Orbax).
With several processes the steps to try and the fate of a damaged checkpoint
are decided by process 0 (:mod:`mmjax.train.agreement`).
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import serialization
from orbax.checkpoint._src.checkpoint_managers import preservation_policy as pp

from mmjax import errors
from mmjax.train import agreement as agreement_lib
from mmjax.train import checksum, files
from mmjax.train import health
from mmjax.train.checkpoint_fit import shapes
from mmjax.train.checkpoint_fit import config_differences, fitting_params, tree_differences  # noqa: F401 (API)
from mmjax.train.run_record import to_json
from mmjax.train.state import TrainState

PyTree = Any


class CheckpointError(errors.CheckpointError):
    """Bad checkpoint option, or a checkpoint that does not fit the model."""


class CheckpointMismatchError(CheckpointError):
    """A readable checkpoint whose arrays do not fit the state this config builds.

    The workdir holds a run of another model or optimizer (a changed fusion,
    width or optimizer chain): the checkpoint is fine and is left where it is.
    """


class _DropMessage(logging.Filter):
    """Drops log records whose message is exactly ``text``."""

    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != self.text


class Checkpointer:
    """Wraps ``ocp.CheckpointManager``.

    Args:
      directory: where checkpoints live (created if missing).
      keep: how many of the most recent checkpoints to keep.
      best_metric: eval metric that ranks checkpoints ("accuracy", "loss"...);
        the best one is kept besides the last ``keep``. None: recency only.
      best_mode: "max" or "min".
      async_save: write in a background thread (the step loop goes on; :meth:`wait`
        and :meth:`close` block until the last save is committed).
      agreement: how processes agree on restores (default: :class:`agreement.Agreement`).
      say: where lines about damaged or unverified checkpoints go (default: stderr).
      clean_partial: remove the ``N.orbax-checkpoint-tmp*`` folders of saves that failed or were
        killed (the run that owns the directory; never an eval, which may run beside a save).

    Every save records checksums of its arrays (:mod:`mmjax.train.checksum`); every restore
    verifies them. Steps whose metrics item Orbax cannot read are set aside before the
    Orbax manager opens the directory (it reads them all there).
    """

    def __init__(self, directory: str, *, keep: int = 2, best_metric: Optional[str] = None,
                 best_mode: str = "max", async_save: bool = False,
                 agreement: Optional[agreement_lib.Agreement] = None,
                 say: Optional[Callable[[str], None]] = None, clean_partial: bool = False):
        if best_mode not in ("max", "min"):
            raise CheckpointError(f"checkpoint.best_mode must be 'max' or 'min', got {best_mode!r}")
        if keep < 1:
            raise CheckpointError(f"checkpoint.keep must be >= 1, got {keep}")
        self.directory = files.display(directory)
        self.agreement = agreement or agreement_lib.Agreement()
        self.say = say or (lambda line: print(line, file=sys.stderr, flush=True))
        self._probe: Optional[ocp.CheckpointManager] = None  # see _reader
        self.manager: Optional[ocp.CheckpointManager] = None
        self._set_aside_unreadable_metrics()
        self.best_metric = best_metric
        policies = [pp.LatestN(n=keep)]
        best_fn = None
        if best_metric:
            best_fn = lambda m: float(m[best_metric])  # noqa: E731
            policies.append(pp.BestN(get_metric_fn=best_fn, reverse=best_mode == "min", n=1,
                                     keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=pp.AnyPreservationPolicy(policies),
            best_fn=best_fn,
            best_mode=best_mode,
            enable_async_checkpointing=async_save,
            create=True,
            cleanup_tmp_directories=clean_partial,
        )
        # Handlers named up front so item_metadata can read a step before any save or restore.
        self.manager = ocp.CheckpointManager(files.path(self.directory), options=options,
                                             item_handlers=_handlers())

    def _set_aside_unreadable_metrics(self) -> None:
        """Process 0 moves aside the steps whose metrics item is damaged; every process waits for it."""
        if self.agreement.is_main:
            for step, reason in sorted(checksum.damaged_metrics(self.directory).items()):
                moved = self._move_aside(step)
                self.say(_set_aside_line(self.directory, step, checksum.DamagedCheckpointError(reason), moved))
        self.agreement.barrier("mmjax_metrics_scan")

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def best_step(self) -> Optional[int]:
        """The best step by ``best_metric`` (the latest when none was ranked)."""
        best = self.manager.best_step() if self.best_metric else None
        return self.manager.latest_step() if best is None else best

    def all_steps(self):
        return list(self.manager.all_steps())

    def agreed_steps(self) -> list:
        """The checkpointed steps, oldest first, as process 0 sees them (the same list on every process)."""
        return self.agreement.share(sorted(self.all_steps()))

    def agreed(self, step: Optional[int]) -> Optional[int]:
        """Process 0's ``step`` (None: no checkpoint) on every process, e.g. ``agreed(best_step())``."""
        value = self.agreement.decision(-1 if step is None else int(step))
        return None if value < 0 else value

    def save(self, step: int, state: TrainState, *, config: Optional[Mapping[str, Any]] = None,
             metrics: Optional[Mapping[str, float]] = None, force: bool = False) -> bool:
        """Saves ``state`` at ``step``; ``metrics`` (flat floats) rank it for "best"."""
        ranked = self._ranked(metrics) if metrics and self.best_metric else None
        meta = {"step": int(step), "data_position": int(step), "config": to_json(config or {}),
                "metrics": to_json(dict(metrics or {}))}
        tree = serialization.to_state_dict(state)
        # A step saved before its eval (the final one) is ranked later by attach_metrics:
        # Orbax's warning that it came without metrics says nothing to the user.
        quiet = _DropMessage("Requested `tracked_metric`; did not provide metrics.")
        absl_logger = logging.getLogger("absl")
        absl_logger.addFilter(quiet)
        try:
            return self.manager.save(
                int(step),
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(tree),
                    meta=ocp.args.JsonSave(meta),
                    checksums=ocp.args.JsonSave(checksum.record(tree, meta, ranked)),
                ),
                metrics=ranked,
                force=force,
            )
        finally:
            absl_logger.removeFilter(quiet)

    def _ranked(self, metrics: Mapping[str, Any]) -> Dict[str, float]:
        """The number-valued ``metrics`` Orbax ranks a step by (``best_metric`` must be among them)."""
        if self.best_metric not in metrics:
            raise CheckpointError(
                f"checkpoint.best_metric {self.best_metric!r} is not among the eval metrics {sorted(metrics)}")
        return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}

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

    def _restore(self, abstract_state: TrainState, step: int) -> TrainState:
        target = serialization.to_state_dict(abstract_state)
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
        )
        return serialization.from_state_dict(abstract_state, restored["state"])

    def array_shapes(self, step: int) -> Dict[str, Tuple[int, ...]]:
        """{"params/fusion/kernel": shape, ...} of step ``step`` as written on disk (reads metadata only)."""
        tree = self.manager.item_metadata(step)["state"]
        if tree is None:
            raise CheckpointError(f"checkpoint {step} in {self.directory} has no readable state metadata")
        return shapes(tree)

    def check_fits(self, abstract_state: TrainState, step: int,
                   config: Optional[Mapping[str, Any]] = None) -> None:
        """Raises :class:`CheckpointMismatchError` when step ``step`` cannot restore into ``abstract_state``.

        Compares array paths and shapes (dtypes are cast on restore). With
        ``config``, the error also names the config keys that differ from the
        config saved with the checkpoint.
        """
        self._check_shapes(self.array_shapes(step), abstract_state, step, config)

    def _check_shapes(self, on_disk: Mapping[str, Tuple[int, ...]], abstract_state: TrainState, step: int,
                      config: Optional[Mapping[str, Any]]) -> None:
        wanted = shapes(serialization.to_state_dict(abstract_state))
        differences = tree_differences(on_disk, wanted)
        if not differences:
            return
        fitting = fitting_params(on_disk, wanted)
        reuse = (f" (--config.init_from.path={os.path.dirname(self.directory)} "
                 f"--config.init_from.source={','.join(fitting)} starts it from the parts of the old run that fit)"
                 if fitting else "")
        hint = ""
        if config is not None:
            try:
                saved = self.metadata(step).get("config") or {}
            except Exception:  # noqa: BLE001 - the hint is optional; the shapes already say what is wrong
                saved = {}
            changed = config_differences(saved, to_json(config))
            if changed:
                hint = f" The config differs from the one saved with it in: {'; '.join(changed)}."
        raise CheckpointMismatchError(
            f"checkpoint {step} in {self.directory} was written by a different model or optimizer than this "
            f"config builds: {'; '.join(differences)}.{hint} Use the config the checkpoint was written with, or "
            f"train this one in another --workdir{reuse}."
        )

    def restore_latest_good(self, abstract_state: TrainState,
                            say: Optional[Callable[[str], None]] = None,
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

    def _try_restore(self, abstract_state: TrainState, step: int, config: Optional[Mapping[str, Any]]):
        """Reads ``step`` back whole and verifies it: -> (verdict, state or None, error or None).

        One process: restores it (the state is returned). Several (process 0
        only): reads every array into host memory through :meth:`_reader`,
        and returns no state. ``MMJAX_FAULT=restore@N:damaged`` makes step N
        unreadable (tests).
        """
        if health.fault("restore", step) == "damaged":
            return agreement_lib.DAMAGED, None, CheckpointError("unreadable (MMJAX_FAULT restore:damaged)")
        reader = self._reader()
        try:
            tree = reader.item_metadata(step)["state"]
            if tree is None:
                raise CheckpointError(f"checkpoint {step} in {self.directory} has no readable state metadata")
            on_disk = shapes(tree)
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
                whole = reader.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(host)))["state"]
            meta = reader.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
            if not checksum.check(files.path(self.directory) / str(step), whole, dict(meta)):
                self.say(f"checkpoint {step} in {self.directory} has no checksums (written before they were "
                         "recorded): restored unverified")
        except Exception as e:  # noqa: BLE001
            return agreement_lib.DAMAGED, None, e
        return agreement_lib.OK, state, None

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
                                                item_handlers=_handlers())
        self._probe.reload()
        return self._probe

    def set_aside(self, step: int, error: Exception, say: Optional[Callable[[str], None]] = None) -> None:
        """Moves damaged step ``step`` aside (:meth:`quarantine`) and says why (every process calls it)."""
        moved = self.quarantine(step)
        (say or self.say)(_set_aside_line(self.directory, step, error, moved))

    def quarantine(self, step: int) -> str:
        """Moves step ``step`` out of the checkpoint directory (process 0 only); returns where it went."""
        self.manager.wait_until_finished()
        moved = self._move_aside(step) if self.agreement.is_main else "checkpoints_corrupt (by process 0)"
        self.agreement.barrier(f"mmjax_quarantine_{step}")
        self.manager.reload()
        return moved

    def _move_aside(self, step: int) -> str:
        """Moves ``DIR/step`` to ``DIR_corrupt/step-<time>-<pid>`` (so the step can be written again)."""
        dest = files.path(self.directory.rstrip("/" + os.sep) + "_corrupt") / (
            f"{step}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
        files.move_tree(files.path(self.directory) / str(step), dest)
        return os.fspath(dest)

    def attach_metrics(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Ranks the committed step ``step`` by eval ``metrics`` after the fact.

        The final checkpoint is saved before its eval (so a hang or kill there loses no
        training); its eval then writes Orbax's metrics item of that step (one atomic file
        write, process 0) and every process re-reads the directory. No-op without a
        ``best_metric`` or when the step is already ranked.
        """
        self.manager.wait_until_finished()
        if not self.best_metric:
            return
        owed = step in self.all_steps() and self.manager.metrics(step) is None
        if not self.agreement.decision(int(owed)):  # process 0's view, so all or none wait below
            return
        ranked = self._ranked(metrics)
        if self.agreement.is_main:
            files.write_text(files.path(self.directory) / str(step) / "metrics" / "metrics", json.dumps(ranked))
        self.agreement.barrier(f"mmjax_attach_metrics_{step}")
        self.manager.reload()

    def metadata(self, step: Optional[int] = None) -> Dict[str, Any]:
        step = self.latest_step() if step is None else step
        return dict(self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
        if self._probe is not None:
            self._probe.close()


def load_params(path: str, step: Optional[int] = None, say: Optional[Callable[[str], None]] = None) -> PyTree:
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


def _handlers() -> Dict[str, Any]:
    """The items of a step: the state, its meta JSON and the checksums JSON."""
    return {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler(),
            checksum.ITEM: ocp.JsonCheckpointHandler()}


def _set_aside_line(directory: str, step: int, error: BaseException, moved: str) -> str:
    what = "is damaged" if isinstance(error, checksum.DamagedCheckpointError) else "is unreadable"
    return f"checkpoint {step} in {directory} {what} ({checksum.reason(error)}); moved to {moved}, trying an older one"
