"""The run's own record, ``WORKDIR/config.json``: the config it trains with and the dataset facts.

Written by process 0 when a run starts in an empty workdir; read back by
resume, ``eval``, ``predict``, ``export`` and :func:`mmjax.load`, so a run is
evaluated and used with exactly the config it was trained with (command-line
overrides go on top) and without its dataset at hand (class names, input
shapes, image normalisation and sample rate travel in ``data_info``).

A resumed run whose config differs from the record is refused
(:class:`ConfigChangedError`, listing the differences) unless the change is
allowed; settings that only say how the run reports itself
(:data:`FREE_KEYS`) may change freely.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Dict, List, Mapping, Optional

import ml_collections

from mmjax import errors
from mmjax.train import files

FILE = "config.json"
# Keys that change what a run logs or where it reads from, never what it computes.
FREE_KEYS = ("description", "log_every", "eval_every", "checkpoint_every", "tensorboard", "workdir_lease_s",
             "data.data_dir", "data.read_threads", "data.prefetch", "checkpoint.keep", "checkpoint.async_save",
             "train.validate_batches", "train.check_finite")
# Per-process counters in the dataset facts: not part of the record.
_VOLATILE_INFO = ("bad_examples",)


class ConfigChangedError(errors.ConfigError):
    """A resumed run's config differs from the one its workdir was trained with."""


@dataclasses.dataclass
class RunRecord:
    """What ``WORKDIR/config.json`` holds."""

    config: ml_collections.ConfigDict
    data_info: Dict[str, Any]
    experiment: str = ""  # the experiment name or config file the run started from


def to_json(x: Any) -> Any:
    """A config (ConfigDict / mapping / sequence / numpy scalar) as plain JSON values."""
    if hasattr(x, "to_dict"):
        x = x.to_dict()
    if isinstance(x, Mapping):
        return {str(k): to_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_json(v) for v in x]
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    if hasattr(x, "item") and getattr(x, "ndim", 1) == 0:
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


def _tuples(x: Any) -> Any:
    # Configs hold tuples (hashable module fields); JSON gives lists back.
    if isinstance(x, dict):
        return {k: _tuples(v) for k, v in x.items()}
    if isinstance(x, list):
        return tuple(_tuples(v) for v in x)
    return x


def config_from_json(d: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """The ConfigDict a :func:`to_json` tree came from (sequences as tuples)."""
    return ml_collections.ConfigDict(_tuples(dict(d)))


def path(workdir: files.PathLike) -> Any:
    return files.path(workdir) / FILE


def write(workdir: files.PathLike, config: Any, data_info: Mapping[str, Any], experiment: str = "") -> None:
    """Writes ``WORKDIR/config.json`` (call on process 0)."""
    info = {k: v for k, v in dict(data_info).items() if k not in _VOLATILE_INFO}
    record = {"experiment": experiment, "config": to_json(config), "data_info": to_json(info)}
    files.write_text(path(workdir), json.dumps(record, indent=2, sort_keys=True) + "\n")


def read(workdir: files.PathLike) -> Optional[RunRecord]:
    """The record of ``workdir``, or None when it has none (a new workdir, or one written before records).

    Raises:
      ConfigChangedError: the file exists but is not a record (damaged or hand-edited into invalid JSON).
    """
    p = path(workdir)
    if not p.exists():
        return None
    try:
        raw = json.loads(files.read_text(p))
        return RunRecord(config=config_from_json(raw["config"]), data_info=dict(raw.get("data_info") or {}),
                         experiment=str(raw.get("experiment") or ""))
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigChangedError(f"{files.display(p)} is not a readable run record ({type(e).__name__}: {e}); "
                                 "fix it or move it away (the run's checkpoints keep their own copy)") from None


def differences(saved: Any, current: Any) -> List[str]:
    """``key: saved -> current`` for every leaf that differs, dotted keys, sorted."""
    out: List[str] = []

    def walk(a, b, key):
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            for k in sorted(set(a) | set(b)):
                walk(a.get(k, "<unset>"), b.get(k, "<unset>"), f"{key}.{k}" if key else str(k))
        elif a != b:
            out.append(f"{key}: {a!r} -> {b!r}")

    walk(to_json(saved), to_json(current), "")
    return out


def is_free(line: str) -> bool:
    """Whether a :func:`differences` line is about a :data:`FREE_KEYS` setting."""
    key = line.split(":", 1)[0]
    return any(key == k or key.startswith(k + ".") for k in FREE_KEYS)


def check_resume(saved: RunRecord, config: Any, *, allow_change: bool) -> List[str]:
    """The differences between a workdir's record and the config it is resumed with.

    Returns every difference (to print); raises :class:`ConfigChangedError`
    when one is outside :data:`FREE_KEYS` and ``allow_change`` is False.
    """
    changed = differences(saved.config, config)
    blocking = [line for line in changed if not is_free(line)]
    if blocking and not allow_change:
        shown = "; ".join(blocking[:8]) + (f"; and {len(blocking) - 8} more" if len(blocking) > 8 else "")
        raise ConfigChangedError(
            f"this run's config differs from the one its workdir was trained with ({FILE}): {shown}. "
            "Resume with the saved config (drop the overrides), pass --allow_config_change to continue with "
            "the new values, or train in another --workdir")
    return changed
