"""Orbax checkpoints: the last K steps plus the best by an eval metric.

Layout: ``WORKDIR/checkpoints/<step>/{state, meta}`` where ``state`` is the
TrainState as a state dict (params, batch_stats, opt_state, step, rng) and
``meta`` is JSON: the step (= data pipeline position), the config and the
metrics of that step. A run pointed at a workdir with checkpoints restores the
latest one and continues from its step.
"""
from __future__ import annotations

import os
import shutil
import time
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import jax
import orbax.checkpoint as ocp
from flax import serialization
from orbax.checkpoint._src.checkpoint_managers import preservation_policy as pp

from mmjax.train.state import TrainState

PyTree = Any


class CheckpointError(ValueError):
    """Bad checkpoint option, or a checkpoint that does not fit the model."""


class Checkpointer:
    """Wraps ``ocp.CheckpointManager``.

    Args:
      directory: where checkpoints live (created if missing).
      keep: how many of the most recent checkpoints to keep.
      best_metric: eval metric that ranks checkpoints ("accuracy", "loss"...);
        the best one is kept besides the last ``keep``. None: recency only.
      best_mode: "max" or "min".
      async_save: write in a background thread (the step loop goes on).
    """

    def __init__(self, directory: str, *, keep: int = 2, best_metric: Optional[str] = None,
                 best_mode: str = "max", async_save: bool = False):
        if best_mode not in ("max", "min"):
            raise CheckpointError(f"checkpoint.best_mode must be 'max' or 'min', got {best_mode!r}")
        if keep < 1:
            raise CheckpointError(f"checkpoint.keep must be >= 1, got {keep}")
        self.directory = os.path.abspath(directory)
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
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def best_step(self) -> Optional[int]:
        """The best step by ``best_metric`` (the latest when none was ranked)."""
        best = self.manager.best_step() if self.best_metric else None
        return self.manager.latest_step() if best is None else best

    def all_steps(self):
        return list(self.manager.all_steps())

    def save(self, step: int, state: TrainState, *, config: Optional[Mapping[str, Any]] = None,
             metrics: Optional[Mapping[str, float]] = None, force: bool = False) -> bool:
        """Saves ``state`` at ``step``; ``metrics`` (flat floats) rank it for "best"."""
        ranked = None
        if metrics and self.best_metric:
            if self.best_metric not in metrics:
                raise CheckpointError(
                    f"checkpoint.best_metric {self.best_metric!r} is not among the eval metrics {sorted(metrics)}"
                )
            ranked = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        meta = {"step": int(step), "data_position": int(step), "config": _jsonable(config or {}),
                "metrics": _jsonable(dict(metrics or {}))}
        return self.manager.save(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(serialization.to_state_dict(state)),
                meta=ocp.args.JsonSave(meta),
            ),
            metrics=ranked,
            force=force,
        )

    def restore(self, abstract_state: TrainState, step: Optional[int] = None) -> TrainState:
        """Restores into the structure, dtypes and shardings of ``abstract_state`` (ShapeDtypeStructs)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        target = serialization.to_state_dict(abstract_state)
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
        )
        return serialization.from_state_dict(abstract_state, restored["state"])

    def restore_latest_good(self, abstract_state: TrainState,
                            say: Optional[Callable[[str], None]] = None) -> Tuple[Optional[TrainState], Optional[int]]:
        """Restores the newest checkpoint that reads back whole, newest first; -> (state, step) or (None, None).

        Orbax only ever exposes finalised steps (a save is written to a
        temporary directory and renamed when complete), so a run killed while
        saving leaves the previous step as the latest. A finalised checkpoint
        can still be damaged afterwards (a truncated copy, a disk error): such
        a step is reported through ``say``, moved to ``checkpoints_corrupt/``
        next to the checkpoint directory (so the step can be written again)
        and the next older one is tried.
        """
        say = say or (lambda line: None)
        for step in sorted(self.all_steps(), reverse=True):
            try:
                state = self.restore(abstract_state, step)
                self.metadata(step)
            except Exception as e:  # noqa: BLE001 - any read failure means "do not trust this step"
                reason = " ".join(str(e).split())[:300] or type(e).__name__
                moved = self.quarantine(step)
                say(f"checkpoint {step} in {self.directory} is unreadable ({type(e).__name__}: {reason}); "
                    f"moved to {moved}, trying an older one")
                continue
            return state, step
        return None, None

    def quarantine(self, step: int) -> str:
        """Moves step ``step`` out of the checkpoint directory; returns where it went."""
        self.manager.wait_until_finished()
        dest_dir = self.directory.rstrip(os.sep) + "_corrupt"
        os.makedirs(dest_dir, exist_ok=True)
        dest = os.path.join(dest_dir, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
        if jax.process_index() == 0:
            shutil.move(os.path.join(self.directory, str(step)), dest)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices(f"mmjax_quarantine_{step}")
        self.manager.reload()
        return dest

    def metadata(self, step: Optional[int] = None) -> Dict[str, Any]:
        step = self.latest_step() if step is None else step
        return dict(self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def load_params(path: str, step: Optional[int] = None) -> PyTree:
    """The ``params`` tree (numpy) of a checkpoint directory written by :class:`Checkpointer`.

    ``path`` is a run's checkpoint directory (``WORKDIR/checkpoints``) or a
    workdir; the latest step is used unless ``step`` is given.
    """
    path = os.path.abspath(path)
    if os.path.isdir(os.path.join(path, "checkpoints")):
        path = os.path.join(path, "checkpoints")
    if not os.path.isdir(path):
        raise CheckpointError(f"init_from: no checkpoint directory at {path}")
    with ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(read_only=True)) as mgr:
        step = mgr.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"init_from: no checkpoint in {path}")
        restored = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    state = restored["state"]
    return jax.tree.map(lambda x: jax.device_get(x), state["params"])


def _jsonable(x: Any) -> Any:
    if hasattr(x, "to_dict"):
        x = x.to_dict()
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    if hasattr(x, "item") and getattr(x, "ndim", 1) == 0:
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)
