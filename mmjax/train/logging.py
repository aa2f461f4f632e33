"""Training logs: console progress, ``metrics.jsonl`` and TensorBoard event files.

TensorBoard files are written by ``tensorboardX`` (no tensorflow needed);
when it is not installed the TensorBoard writer is skipped with a notice.
Only process 0 writes; the others get a :class:`MetricWriter` that does nothing.

Object-store workdirs (``gs://``): objects cannot be appended to, and
tensorboardX's own ``gs://`` writer needs ``google-cloud-storage`` and its
credentials beside the ones gcsfs uses. So ``metrics.jsonl`` is kept in memory
and the TensorBoard events are written to a local temporary directory; both
are uploaded through :mod:`mmjax.train.files` by :meth:`MetricWriter.sync`:
at most every ``SYNC_EVERY_S`` seconds, before every checkpoint (so the stored
``metrics.jsonl`` holds every record up to the latest checkpoint) and at close.
A run killed in between loses the records after its last checkpoint, which a
resume replays anyway.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Dict, List, Mapping, Optional, TextIO, Tuple

from mmjax.train import files

SYNC_EVERY_S = 30.0  # object-store workdirs: the longest time between uploads of the logs


class _Stdout:
    """The default console: ``sys.stdout`` as it is when the writing starts."""

    def __repr__(self) -> str:
        return "STDOUT"


# A ``console=sys.stdout`` default would be bound at import time and keep a
# stream that may since have been replaced and closed (pytest's capture, a
# redirected notebook cell); this one is looked up when it is used.
STDOUT: Any = _Stdout()


def resolve_console(console: Any) -> Optional[TextIO]:
    """``STDOUT`` -> the current ``sys.stdout``; a stream or None as given."""
    return sys.stdout if console is STDOUT else console


def _flat(metrics: Mapping[str, Any], prefix: str = "") -> Dict[str, float]:
    out: Dict[str, float] = {}
    for k, v in metrics.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flat(v, key + "/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = float(v)
    return out


def _flat_settings(config: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    """Dotted key -> value for every scalar leaf (numbers, strings, bools) of a config tree."""
    out: Dict[str, Any] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flat_settings(v, key + "."))
        elif isinstance(v, (int, float, str, bool)):
            out[key] = v
    return out


def _json_value(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/Inf; keep them readable
    if isinstance(v, Mapping):
        return {k: _json_value(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_value(x) for x in v]
    return v


class MetricWriter:
    """Writes one record per logged step to every enabled sink.

    Args:
      workdir: the run directory (``metrics.jsonl``, ``tensorboard/``).
      enabled: False on processes other than 0.
      tensorboard: also write TensorBoard events.
      console: stream for progress lines (None: silent; default the current sys.stdout).
    """

    def __init__(self, workdir: str, *, enabled: bool = True, tensorboard: bool = True,
                 console: Optional[TextIO] = STDOUT):
        self.enabled = enabled
        self.console = resolve_console(console) if enabled else None
        self._jsonl = None
        self._tb = None
        self._remote = files.is_remote(workdir)
        self._root = files.path(workdir)
        self._lines: List[str] = []   # object stores: metrics.jsonl as it will be uploaded
        self._staging: Optional[str] = None
        self._synced = time.monotonic()
        if not enabled:
            return
        tb_dir = os.path.join(os.fspath(self._root), "tensorboard")
        if self._remote:
            jsonl = self._root / "metrics.jsonl"
            self._lines = jsonl.read_text(encoding="utf-8").splitlines() if jsonl.exists() else []
            self._staging = tempfile.mkdtemp(prefix="mmjax-tensorboard-")
            tb_dir = self._staging
        else:
            os.makedirs(workdir, exist_ok=True)
            self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                self._print("tensorboardX is not installed: no TensorBoard events (pip install tensorboardX)")
            else:
                self._tb = SummaryWriter(tb_dir)

    def _print(self, line: str) -> None:
        if self.console is not None:
            print(line, file=self.console, flush=True)

    def write(self, step: int, metrics: Mapping[str, Any], *, prefix: str = "") -> None:
        """``metrics`` (nested dicts of numbers allowed) at ``step``; ``prefix`` e.g. "eval/" for TensorBoard
        tags (default "train/"), and ``eval_`` for the metrics.jsonl keys."""
        if not self.enabled:
            return
        record = {"step": int(step)}
        record.update({(prefix.rstrip("/") + "_" + k if prefix else k): _json_value(v) for k, v in metrics.items()})
        if self._remote:
            self._lines.append(json.dumps(record))
        else:
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()
        if self._tb is not None:
            for k, v in _flat(metrics, prefix or "train/").items():
                self._tb.add_scalar(k, v, step)
        if self._remote and time.monotonic() - self._synced > SYNC_EVERY_S:
            self.sync()

    def write_config(self, config: Mapping[str, Any]) -> None:
        """The run's config (a JSON tree) as TensorBoard text, and its scalar settings as hparams."""
        if not self.enabled or self._tb is None:
            return
        self._tb.add_text("config", "```\n" + json.dumps(config, indent=2, sort_keys=True) + "\n```", 0)
        hparams = _flat_settings(config)
        if hparams:
            # The HParams tab lists runs by their settings, with the eval scalars beside them.
            from tensorboardX.summary import hparams as hparams_summary

            for summary in hparams_summary(hparams, {"eval/accuracy": 0.0, "eval/loss": 0.0}):
                self._tb.file_writer.add_summary(summary)

    def write_image(self, tag: str, image: Any, step: int) -> None:
        """An (H, W, C) uint8 image (e.g. an eval plot) under ``tag``."""
        if self.enabled and self._tb is not None:
            self._tb.add_image(tag, image, step, dataformats="HWC")

    def sync(self) -> None:
        """Object-store workdirs: uploads metrics.jsonl and the TensorBoard events (local files need nothing)."""
        if not (self.enabled and self._remote):
            return
        if self._tb is not None:
            self._tb.flush()
        self._upload()

    def _upload(self) -> None:
        files.write_text(self._root / "metrics.jsonl", "".join(line + "\n" for line in self._lines))
        for name in sorted(os.listdir(self._staging)):
            if os.path.isfile(os.path.join(self._staging, name)):
                files.upload(os.path.join(self._staging, name), self._root / "tensorboard" / name)
        self._synced = time.monotonic()

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._remote and self.enabled:
            self._upload()
            shutil.rmtree(self._staging, ignore_errors=True)
            self.enabled = False


class Progress:
    """Steps/s, examples/s and ETA over the steps since the last report."""

    def __init__(self, total_steps: int, batch_size: int, start_step: int = 0):
        self.total_steps = total_steps
        self.batch_size = batch_size
        self._t = time.perf_counter()
        self._step = start_step

    def restart(self, step: int) -> None:
        """Measures from ``step`` on (after the first step, whose time is mostly compilation)."""
        self._t, self._step = time.perf_counter(), step

    def exclude(self, seconds: float) -> None:
        """Leaves time spent outside training steps (eval, checkpoints) out of the rates."""
        self._t += seconds

    def update(self, step: int) -> Dict[str, float]:
        now = time.perf_counter()
        dt = max(now - self._t, 1e-9)
        steps_per_s = (step - self._step) / dt
        self._t, self._step = now, step
        eta = (self.total_steps - step) / steps_per_s if steps_per_s > 0 else float("inf")
        return {"steps_per_sec": steps_per_s, "examples_per_sec": steps_per_s * self.batch_size, "eta_sec": eta}


def format_line(step: int, total: int, metrics: Mapping[str, float], speed: Mapping[str, float]) -> str:
    eta = speed.get("eta_sec", float("inf"))
    eta_s = "?" if not math.isfinite(eta) else time.strftime("%H:%M:%S", time.gmtime(eta))
    parts = [f"step {step}/{total}"]
    for key in ("loss", "accuracy", "grad_norm"):
        if key in metrics:
            parts.append(f"{key} {metrics[key]:.4f}")
    parts.append(f"{speed.get('steps_per_sec', 0):.2f} steps/s")
    parts.append(f"{speed.get('examples_per_sec', 0):.0f} ex/s")
    parts.append(f"ETA {eta_s}")
    return " | ".join(parts)


def truncate_metrics(path, step: int, drop_eval_at: Optional[int] = None) -> Tuple[int, int]:
    """Keeps the records of ``path`` (metrics.jsonl, local or gs://) up to ``step``.

    -> (records after ``step``, damaged lines) dropped: a line that is not a JSON
    object with an integer step (cut by a kill, a bad byte, edited) is damaged.
    ``drop_eval_at``: also drop the eval records of that step (an eval that runs again).
    """
    path = files.path(path)
    if not path.exists():
        return 0, 0
    keep, later, damaged, changed = [], 0, 0, False
    for raw in path.read_bytes().splitlines():
        try:
            rec = json.loads(raw.decode("utf-8"))
            at = rec["step"]
            if not isinstance(at, int) or isinstance(at, bool):
                raise TypeError(at)
        except (ValueError, TypeError, KeyError):
            damaged += 1
            continue
        if at == drop_eval_at and any(str(k).startswith("eval_") for k in rec):
            changed = True  # that eval runs again on this resume and writes its record anew
        elif at <= step:
            keep.append(raw.decode("utf-8"))
        else:
            later += 1
    if later or damaged or changed:
        files.write_text(path, "".join(line + "\n" for line in keep))
    return later, damaged
