"""Checksums of a checkpoint, recorded when it is saved and verified when it is restored.

A finalised checkpoint can still be damaged afterwards (a disk or copy error, a
byte flipped in storage) in a way that reads back without an error: compressed
array chunks decode into other numbers. So each save writes a ``checksums`` item
(JSON, saved and committed by Orbax with the rest of the step)::

    {"format": 1, "algorithm": "crc32",
     "arrays": {"params/head/out/kernel": {"dtype": "float32", "shape": [32, 3],
                                           "shards": [[[[0, 32], [0, 3]], 1234567890]]}, ...},
     "items": {"meta": crc, "metrics": crc}}

Each array lists the distinct slices of its sharding (``[start, stop)`` per
dimension; one slice, the whole array, when it is not sharded) with the crc32
(:func:`zlib.crc32`) of that slice's bytes in C order. With several processes
every process can only read its addressable shards: each slice is hashed by the
process that holds its replica 0, and the values are summed across processes in
one ``process_allgather`` of a small uint32 vector (the other processes put 0
there). Verification hashes the same slices of the whole restored array, so it
does not depend on the mesh or process count of the restore; the restore check
has the whole array on its host (one process, or process 0's host copy, see
:meth:`mmjax.train.checkpoint_restore.VerifiedRestore._try_restore`). ``items`` holds the crc32 of the canonical
JSON of the ``meta`` item and, when saved with one, of Orbax's ``metrics`` item.

Cost: one more device-to-host copy of the state per save, and crc32 at about
2 GB/s per core on save and on restore. Checkpoints written before checksums
were recorded have no such item: they restore unverified (with a log line).
"""
from __future__ import annotations

import json
import sys
import zlib
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import jax
import numpy as np

from mmjax import errors
from mmjax.train import files

ITEM = "checksums"  # the Orbax item name
FILENAME = "metadata"  # the file JsonCheckpointHandler writes in it
METRICS_FILE = ("metrics", "metrics")  # Orbax's metrics item, read by every CheckpointManager it opens
FORMAT = 1


class DamagedCheckpointError(errors.CheckpointError):
    """A checkpoint that reads back but whose bytes differ from those saved (or that holds NaN params)."""


def crc(data) -> int:
    """crc32 of an array's bytes in C order (any dtype, bfloat16 included)."""
    return zlib.crc32(np.ascontiguousarray(data).reshape(-1).view(np.uint8)) & 0xFFFFFFFF


def json_crc(obj: Any) -> int:
    """crc32 of ``obj``'s canonical JSON (sorted keys, as it reads back from a JSON item)."""
    text = json.dumps(json.loads(json.dumps(obj)), sort_keys=True, separators=(",", ":"))
    return zlib.crc32(text.encode("utf-8")) & 0xFFFFFFFF


def leaves(tree: Any) -> List[Tuple[str, Any]]:
    """[("params/a/b", leaf), ...] of a state dict, in tree order."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [("/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path), x) for path, x in flat]


def _bounds(index: Tuple[slice, ...], shape: Tuple[int, ...]) -> List[List[int]]:
    return [list(s.indices(n)[:2]) for s, n in zip(index, shape)]


def record(state: Any, meta: Optional[Mapping[str, Any]] = None,
           metrics: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The ``checksums`` item of a state dict (numpy or jax arrays, sharded ones included).

    Call it on every process (with several, it ends in one allgather).
    """
    arrays: Dict[str, Any] = {}
    sharded: List[str] = []  # paths of jax arrays, whose slice values come from the gathered vector
    slots: List[int] = []  # this process's crc32 of each distinct slice it holds replica 0 of, else 0
    for path, x in leaves(state):
        if isinstance(x, jax.Array):
            shape = tuple(x.shape)
            distinct = sorted({tuple(map(tuple, _bounds(i, shape)))
                               for i in x.sharding.devices_indices_map(shape).values()})
            position = {b: len(slots) + k for k, b in enumerate(distinct)}
            slots.extend(0 for _ in distinct)
            for shard in x.addressable_shards:
                if shard.replica_id == 0:
                    slots[position[tuple(map(tuple, _bounds(shard.index, shape)))]] = crc(np.asarray(shard.data))
            arrays[path] = {"dtype": str(x.dtype), "shape": list(shape),
                            "shards": [[[list(b) for b in bounds], position[bounds]] for bounds in distinct]}
            sharded.append(path)
        else:
            a = np.asarray(x)
            arrays[path] = {"dtype": str(a.dtype), "shape": list(a.shape),
                            "shards": [[[[0, n] for n in a.shape], crc(a)]]}
    if sharded:
        values = np.asarray(slots, np.uint32)
        if jax.process_count() > 1:  # exactly one process holds replica 0 of each slice: a sum collects them
            from jax.experimental import multihost_utils
            values = np.asarray(multihost_utils.process_allgather(values)).astype(np.uint64).sum(axis=0)
        for path in sharded:
            for shard in arrays[path]["shards"]:
                shard[1] = int(values[shard[1]])  # position -> crc32
    items = {}
    if meta is not None:
        items["meta"] = json_crc(meta)
    if metrics is not None:
        items["metrics"] = json_crc(metrics)
    return {"format": FORMAT, "algorithm": "crc32", "arrays": arrays, "items": items}


def read(step_dir) -> Optional[Dict[str, Any]]:
    """The ``checksums`` item of a step directory; None for a checkpoint written without one."""
    p = files.path(step_dir) / ITEM / FILENAME
    if not p.exists():
        return None
    rec = json.loads(p.read_text())
    if not isinstance(rec, dict) or not isinstance(rec.get("arrays"), dict):
        raise DamagedCheckpointError(f"{p} is not a checksums record")
    return rec


def array_problems(state: Any, rec: Mapping[str, Any]) -> List[str]:
    """Paths of ``state`` (whole arrays, numpy or fully addressable) whose bytes differ from ``rec``.

    Arrays restored into another dtype (a cast on restore) cannot be compared and are skipped.
    """
    bad = []
    for path, x in leaves(state):
        want = rec["arrays"].get(path)
        if want is None:
            continue
        a = np.asarray(x)
        if str(a.dtype) != want["dtype"] or list(a.shape) != list(want["shape"]):
            continue
        for bounds, value in want["shards"]:
            if crc(a[tuple(slice(lo, hi) for lo, hi in bounds)]) != int(value):
                bad.append(path)
                break
    return bad


def nonfinite_params(state: Any) -> List[str]:
    """Paths of the float arrays under ``params`` that hold NaN or Inf."""
    params = state.get("params", {}) if isinstance(state, Mapping) else {}
    return [f"params/{path}" for path, x in leaves(params)  # issubdtype: bfloat16 (numpy kind "V") too
            if jax.numpy.issubdtype(np.asarray(x).dtype, jax.numpy.floating) and not np.isfinite(np.asarray(x)).all()]


def check(step_dir, state: Any, meta: Optional[Mapping[str, Any]] = None) -> bool:
    """Raises :class:`DamagedCheckpointError` when ``state`` (restored from ``step_dir``, whole arrays)
    or its ``meta`` item differ from the checksums saved with them, or its params are not finite.

    Returns False (nothing to verify) for a checkpoint written without checksums, True otherwise.
    """
    rec = read(step_dir)
    problems = []
    if rec is not None:
        bad = array_problems(state, rec)
        if bad:
            more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
            problems.append(f"checksum mismatch in {', '.join(bad[:3])}{more}")
        items = rec.get("items") or {}
        if meta is not None and "meta" in items and json_crc(meta) != int(items["meta"]):
            problems.append("checksum mismatch in its meta item")
        metrics_path = files.path(step_dir).joinpath(*METRICS_FILE)
        if "metrics" in items and metrics_path.exists() and \
                json_crc(json.loads(metrics_path.read_text())) != int(items["metrics"]):
            problems.append("checksum mismatch in its metrics item")
    nonfinite = nonfinite_params(state)
    if nonfinite:
        problems.append(f"non-finite values in {', '.join(nonfinite[:3])}")
    if problems:
        raise DamagedCheckpointError("; ".join(problems))
    return rec is not None


def damaged_metrics(directory) -> Dict[int, str]:
    """{step: reason} for the steps in ``directory`` whose Orbax metrics item is not a JSON object.

    Orbax reads every step's metrics when a CheckpointManager opens the directory (and
    fails there on a damaged one), so this runs first, on the files themselves.
    """
    root = files.path(directory)
    if not root.is_dir():
        return {}
    bad = {}
    for child in root.iterdir():
        if not child.name.isdigit():
            continue
        p = child.joinpath(*METRICS_FILE)
        try:
            if not p.exists():
                continue
            value = json.loads(p.read_bytes().decode("utf-8"))
            if not isinstance(value, dict):
                raise ValueError(f"a JSON {type(value).__name__}, not an object")
        except (ValueError, UnicodeDecodeError, OSError) as e:
            bad[int(child.name)] = f"{type(e).__name__}: {e} in {'/'.join(METRICS_FILE)}"
    return bad


def reason(error: BaseException) -> str:
    """One line about ``error``: its message, with the exception type unless it is a checksum verdict."""
    text = " ".join(str(error).split())[:300]
    if isinstance(error, DamagedCheckpointError):
        return text or "damaged"
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def newest_good_state(directory, steps: Sequence[int], *, must: bool = False,
                      say: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """The state dict of the first of ``steps`` in ``directory`` that reads back and verifies (init_from).

    Each step is read on its own (no CheckpointManager, which reads every step's metrics
    item first); a damaged one is reported through ``say`` and skipped, nothing is moved
    (the directory belongs to another run). ``must``: the first step is the one asked for,
    and damage is an error.
    """
    import orbax.checkpoint as ocp
    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    root = files.path(directory)
    for k, step in enumerate(steps):
        try:
            with ocp.StandardCheckpointer() as reader:
                state = reader.restore(root / str(step) / "state")
            meta = json.loads((root / str(step) / "meta" / FILENAME).read_text())
            verified = check(root / str(step), state, meta)
        except Exception as e:  # noqa: BLE001 - any read failure means "do not use this step"
            line = f"init_from: checkpoint {step} in {root} is damaged ({reason(e)})"
            if must:
                raise DamagedCheckpointError(line) from None
            say(line + ("; trying an older one" if k + 1 < len(steps) else ""))
            continue
        if not verified:
            say(f"init_from: checkpoint {step} in {root} has no checksums (written before they were recorded): "
                "used unverified")
        return state
    raise DamagedCheckpointError(f"init_from: no checkpoint in {root} could be read")
