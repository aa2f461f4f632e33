"""Where a run's files live: a local directory or an object-store URL (``gs://bucket/run``).

Every file a run writes or reads (checkpoints through Orbax, ``metrics.jsonl``,
``results.json``, TensorBoard events, eval reports, the workdir lock) is named
by an ``etils.epath.Path`` from :func:`path`, the same abstraction Orbax uses.
Local paths are made absolute and are read and written as before (a file is
replaced by writing a temporary file next to it and renaming it). Object-store
paths go through fsspec (``gcsfs`` for ``gs://``); an object upload is atomic
(readers see the old or the new object), so it needs no temporary file.

Backend choice: with tensorflow installed, etils routes ``gs://`` through
``tf.io.gfile``, which imports tensorflow into the training process and does
not honour ``STORAGE_EMULATOR_HOST``. :func:`path` therefore selects fsspec
(``EPATH_USE_TF=false``) the first time it sees an object-store URL, unless the
environment already sets ``EPATH_USE_TF``.
"""
from __future__ import annotations

import os
import re
import shutil
from typing import Union

from etils import epath

from mmjax import errors

PathLike = Union[str, os.PathLike]
_SCHEME = re.compile(r"^([a-z][a-z0-9+.-]*)://")
# fsspec filesystems that an object-store workdir needs, by URL scheme.
_BACKENDS = {"gs": "gcsfs", "gcs": "gcsfs", "s3": "s3fs"}


class PathError(errors.ConfigError):
    """An object-store URL that this installation cannot reach (its fsspec backend is missing)."""


def scheme(p: PathLike) -> str:
    """"gs" for ``gs://b/x``, "" for a local path."""
    m = _SCHEME.match(os.fspath(p))
    return "" if m is None or m.group(1) == "file" else m.group(1)


def is_remote(p: PathLike) -> bool:
    """Whether ``p`` names an object store (``gs://``, ``s3://``...) rather than a local path."""
    return bool(scheme(p))


def _use_fsspec(kind: str) -> None:
    if kind in _BACKENDS:
        module = _BACKENDS[kind]
        try:
            __import__(module)
        except ImportError:
            raise PathError(f"{kind}:// paths need {module} (pip install {module}, or mmjax[cloud])") from None
    if "EPATH_USE_TF" not in os.environ:
        os.environ["EPATH_USE_TF"] = "false"
    if os.environ["EPATH_USE_TF"].lower() in ("false", "no", "f", "0"):
        from etils.epath import gpath
        cached = getattr(gpath, "_is_tf_installed", None)
        if hasattr(cached, "cache_clear"):
            cached.cache_clear()  # an earlier object-store path may have cached the tensorflow choice


def path(p: PathLike) -> epath.Path:
    """``p`` as an ``epath.Path``: local paths made absolute, object-store URLs kept as they are."""
    kind = scheme(p)
    if kind:
        _use_fsspec(kind)
        return epath.Path(os.fspath(p))
    return epath.Path(os.path.abspath(os.fspath(p)))


def write_text(p: PathLike, text: str) -> None:
    """Replaces the file ``p`` with ``text`` as one step (readers never see half of it)."""
    write_bytes(p, text.encode("utf-8"))


def write_bytes(p: PathLike, data: bytes) -> None:
    """Replaces the file ``p`` with ``data`` as one step; creates its parent directory."""
    target = path(p)
    if is_remote(target):
        target.write_bytes(data)  # one object upload: atomic
        return
    os.makedirs(os.fspath(target.parent), exist_ok=True)
    tmp = os.fspath(target) + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, os.fspath(target))


def read_text(p: PathLike) -> str:
    return path(p).read_text(encoding="utf-8")


def makedirs(p: PathLike) -> epath.Path:
    """Creates directory ``p`` (a no-op on object stores, which have no directories); returns it."""
    target = path(p)
    if not is_remote(target):
        target.mkdir(parents=True, exist_ok=True)
    return target


def upload(local_file: PathLike, p: PathLike) -> None:
    """Copies a local file to ``p`` (local or remote), replacing it."""
    with open(os.fspath(local_file), "rb") as f:
        write_bytes(p, f.read())


def move_tree(src: PathLike, dst: PathLike) -> None:
    """Moves the directory ``src`` to ``dst``; on an object store, copies every object and deletes ``src``."""
    src, dst = path(src), path(dst)
    if not is_remote(src):
        os.makedirs(os.fspath(dst.parent), exist_ok=True)
        shutil.move(os.fspath(src), os.fspath(dst))
        return
    import fsspec  # epath has no recursive copy on object stores (and refuses "**" globs there)
    fs, src_key = fsspec.core.url_to_fs(os.fspath(src))
    dst_key = fsspec.core.url_to_fs(os.fspath(dst))[1]
    fs.copy(src_key.rstrip("/") + "/", dst_key.rstrip("/") + "/", recursive=True)
    fs.rm(src_key, recursive=True)


def display(p: PathLike) -> str:
    """How a path is shown in messages: absolute for local paths, the URL for object stores."""
    return os.fspath(path(p))
