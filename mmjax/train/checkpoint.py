"""Orbax checkpoints: the last K steps plus the best by an eval metric.

Layout: ``WORKDIR/checkpoints/<step>/{state, meta, checksums[, metrics]}`` where
``state`` is the TrainState as a state dict (params, batch_stats, opt_state, step,
rng), ``meta`` is JSON: the step (= data pipeline position), the config and the
metrics of that step, ``checksums`` the crc32 record of :mod:`mmjax.train.checksum`
and ``metrics`` Orbax's ranking item (:mod:`mmjax.train.checkpoint_items`). A run
pointed at a workdir with checkpoints restores the latest one and continues from its step.

``directory`` may be local or an object-store URL (``gs://bucket/run/checkpoints``):
paths go through :mod:`mmjax.train.files` (``etils.epath``, as in Orbax).
With several processes the steps to try and the fate of a damaged checkpoint
are decided by process 0 (:mod:`mmjax.train.agreement`).

This module holds :class:`Checkpointer` (opening, saving, ranking); its restores,
their verification and the set-aside of damaged steps are in
:mod:`mmjax.train.checkpoint_restore`, whose names are re-exported here.
"""
from __future__ import annotations

import json
import logging
import sys
from typing import Any, Callable, Dict, Mapping, Optional

import orbax.checkpoint as ocp
from flax import serialization
from orbax.checkpoint import checkpoint_managers as policies

from mmjax.train import agreement as agreement_lib
from mmjax.train import checkpoint_items as items
from mmjax.train import files
from mmjax.train.checkpoint_fit import (CheckpointError, CheckpointMismatchError, config_differences,
                                        fitting_params, tree_differences)
from mmjax.train.checkpoint_restore import VerifiedRestore, load_params, set_aside_unreadable_metrics
from mmjax.train.run_record import to_json
from mmjax.train.state import TrainState

__all__ = ["Checkpointer", "CheckpointError", "CheckpointMismatchError", "load_params",
           "config_differences", "fitting_params", "tree_differences"]


class _DropMessage(logging.Filter):
    """Drops log records whose message is exactly ``text``."""

    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != self.text


class Checkpointer(VerifiedRestore):
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
    verifies them (:class:`mmjax.train.checkpoint_restore.VerifiedRestore`: ``restore``,
    ``restore_latest_good``, ``check_fits``, ``array_shapes``, ``set_aside``, ``quarantine``).
    Steps whose metrics item Orbax cannot read are set aside before the Orbax manager
    opens the directory (it reads them all there).
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
        set_aside_unreadable_metrics(self.directory, self.agreement, self.say)
        self.best_metric = best_metric
        keep_policies = [policies.LatestN(n=keep)]
        best_fn = None
        if best_metric:
            best_fn = lambda m: float(m[best_metric])  # noqa: E731
            keep_policies.append(policies.BestN(get_metric_fn=best_fn, reverse=best_mode == "min", n=1,
                                                keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policies.AnyPreservationPolicy(keep_policies),
            best_fn=best_fn,
            best_mode=best_mode,
            enable_async_checkpointing=async_save,
            create=True,
            cleanup_tmp_directories=clean_partial,
        )
        # Handlers named up front so item_metadata can read a step before any save or restore.
        self.manager = ocp.CheckpointManager(files.path(self.directory), options=options,
                                             handler_registry=items.handler_registry())

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
            return self.manager.save(int(step), args=items.save_args(tree, meta, ranked), metrics=ranked,
                                     force=force)
        finally:
            absl_logger.removeFilter(quiet)

    def _ranked(self, metrics: Mapping[str, Any]) -> Dict[str, float]:
        """The number-valued ``metrics`` Orbax ranks a step by (``best_metric`` must be among them)."""
        if self.best_metric not in metrics:
            raise CheckpointError(
                f"checkpoint.best_metric {self.best_metric!r} is not among the eval metrics {sorted(metrics)}")
        return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}

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
        return dict(self.manager.restore(step, args=items.meta_args())[items.META])

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
        if self._probe is not None:
            self._probe.close()


