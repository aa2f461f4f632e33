"""Checks that fail fast, before any data is read or anything compiles: the workdir can be
written (or its bucket reached), and the config's names, sizes and parallel layout fit this run."""
from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import numpy as np

from mmjax import errors
from mmjax.train import builder, files
from mmjax.train.config_access import as_dict as _as_dict, setting
from mmjax.train.tasks import task_class


class WorkdirError(errors.ConfigError):
    """The workdir cannot be used (it is a file, or not writable)."""


def check_workdir(workdir: str) -> None:
    """Raises :class:`WorkdirError` unless ``workdir`` is (or can become) a directory, and
    :class:`mmjax.train.files.StorageError` when a test write in it (or its ``checkpoints/``) fails.

    An object-store URL needs its fsspec backend (gcsfs for ``gs://``) and must not name an object;
    whether it is writable shows at the first write (the lock).
    """
    raw = os.fsencode(workdir if files.is_remote(workdir) else os.path.abspath(workdir))
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:  # tensorstore (Orbax's checkpoint store) cannot take the path: fail before any step
        raise WorkdirError(
            f"--workdir {raw!r} is not valid UTF-8 (byte {raw[e.start]:#04x} at position {e.start}): checkpoints "
            "are written through tensorstore, which takes UTF-8 paths only; rename it or use another --workdir") from None
    if files.is_remote(workdir):
        bucket = "/".join(os.fspath(workdir).split("/")[:3])  # gs://bucket
        try:
            root = files.path(workdir)
            found = files.path(bucket).exists()
            is_file = found and root.exists() and not root.is_dir()
        except files.PathError as e:
            raise WorkdirError(f"--workdir {workdir}: {e}") from None
        except OSError as e:
            raise WorkdirError(f"--workdir {workdir}: cannot reach {bucket} ({type(e).__name__}: {e})") from None
        if not found:
            raise WorkdirError(f"--workdir {workdir}: bucket {bucket} does not exist (or these credentials cannot see it)")
        if is_file:
            raise WorkdirError(f"--workdir {workdir} is a file, not a directory")
        return
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise WorkdirError(f"--workdir {workdir} is a file, not a directory")
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        raise WorkdirError(f"--workdir {workdir}: cannot create it ({e.strerror})") from None
    # A real write in each folder a run writes: read-only, full or foreign storage is found now,
    # before anything compiles, not at the first checkpoint (root passes os.access where it may not write).
    for d in (workdir, os.path.join(workdir, "checkpoints")):
        if os.path.isdir(d):
            files.check_writable(d)


def check_config(config: Any) -> None:
    """Checks that fail fast, before data is read or anything is compiled.

    Encoder and fusion names (with "did you mean" hints), the mesh against the
    device count, ``single`` mode against the process count (refused with
    several), and the global batch size against the data-parallel width.
    """
    from mmjax import encoders as encoder_registry
    from mmjax.models import fusion_choice
    from mmjax.train.parallel import ParallelConfigError, check_processes, mesh_shape
    model = _as_dict(config.model)
    for m, spec in dict(model.get("encoders") or {}).items():
        for s in (spec if isinstance(spec, (list, tuple)) else (spec,)):
            if s and isinstance(s, Mapping) and "name" in s:
                encoder_registry.ENCODERS.get(s["name"])
    if task_class(config).name == "classification":
        fusion_choice.resolve(model)  # the one reader of model.placement / model.fusion
    for key in ("total_steps", "batch_size"):
        value = config[key]
        whole = isinstance(value, (int, np.integer)) or isinstance(value, float) and value.is_integer()
        if isinstance(value, bool) or not whole:
            raise ParallelConfigError(f"{key} must be a whole number >= 1, got {value!r}")
        if int(value) < 1:
            raise ParallelConfigError(f"{key} must be >= 1, got {int(value)}")
    batch = int(config.batch_size)
    mode = builder.parallel_mode(config)
    check_processes(mode, jax.process_count())
    n = jax.device_count()
    if mode == "sharded":
        sizes = dict(zip(("data", "fsdp", "tensor"), mesh_shape(_as_dict(setting(config, "parallel.mesh")), n)))
        width = sizes["data"] * sizes["fsdp"]
    elif mode == "pmap":
        width = n
    else:
        width = 1
    if batch % width:
        raise ParallelConfigError(
            f"batch_size {batch} is not divisible by the {width} data-parallel shards "
            f"({mode} mode on {n} devices); use a multiple of {width}"
        )
