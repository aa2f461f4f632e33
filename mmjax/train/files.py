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

import errno
import os
import re
import shutil
import tempfile
from typing import Optional, Union

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
    """Replaces the file ``p`` with ``data`` as one step; creates its parent directory.

    Locally the bytes go to a temporary file next to ``p`` that is renamed over it, so a
    failed write (disk full) leaves the old file whole and no temporary file behind.
    """
    target = path(p)
    if is_remote(target):
        target.write_bytes(data)  # one object upload: atomic
        return
    os.makedirs(os.fspath(target.parent), exist_ok=True)
    tmp = f"{os.fspath(target)}.{os.getpid()}.tmp"  # per process: two writers never share one
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, os.fspath(target))
    except BaseException as e:
        if os.path.lexists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError) and e.filename is None:  # a failed write() names no file: name the target
            raise OSError(e.errno, e.strerror, os.fspath(target)) from e
        raise


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


# --------------------------------------------------------------------------- storage faults
class StorageError(errors.RunError):
    """The run's storage refused a write: the disk is full, read-only or not writable by this user."""


# errno -> what the message calls it; EFBIG is a file size limit (ulimit -f) met like a full disk.
_FAULTS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
           errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
           errno.EFBIG: "file size limit exceeded"}
# Tensorstore (Orbax) and tensorflow report the OS error in their message text.
_CODE_IN_TEXT = re.compile(r"os_error_code='(\d+)'")
_QUOTED_PATH = re.compile(r"\"(/[^\"]+)\"")
_NAMED_PATH = re.compile(r"(?:writing|opening|file) (/[^\s;,\"')]+)")  # ArrayRecord: "...; writing /x/y; at byte 3"


def _fault_in(exc: BaseException) -> tuple:
    """-> (errno, path or None) when ``exc`` itself reports a storage fault, else (0, None)."""
    if isinstance(exc, OSError) and exc.errno in _FAULTS:
        where = exc.filename if exc.filename is not None else exc.filename2
        return exc.errno, (os.fsdecode(where) if where is not None else None)
    text = str(exc)
    m = _CODE_IN_TEXT.search(text)
    code = int(m.group(1)) if m else next((c for c in _FAULTS if os.strerror(c) in text), 0)
    if code not in _FAULTS:
        return 0, None
    found = _QUOTED_PATH.findall(text) or _NAMED_PATH.findall(text)
    return code, (found[-1] if found else None)


def human_size(n: float) -> str:
    """``12.0 KiB`` for 12288 bytes."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def _nearest_folder(p: PathLike) -> str:
    d = os.path.abspath(os.fspath(p))
    while not os.path.isdir(d) and os.path.dirname(d) != d:
        d = os.path.dirname(d)
    return d


def free_space(p: PathLike) -> str:
    """``"12.0 KiB free of 256.0 KiB"`` for the file system holding ``p`` (its nearest existing folder)."""
    try:
        usage = shutil.disk_usage(_nearest_folder(p))
    except OSError:
        return "free space unknown"
    return f"{human_size(usage.free)} free of {human_size(usage.total)}"


def storage_fault(exc: BaseException, where: Optional[PathLike] = None,
                  fallback: Optional[PathLike] = None) -> Optional[StorageError]:
    """``exc``, or an exception it was raised from, as a one-line :class:`StorageError`; None if not a storage fault.

    A storage fault is an ``OSError`` with ENOSPC, EDQUOT, EROFS, EACCES or EFBIG, or an error of
    tensorstore or tensorflow whose text carries one. ``where`` names the path in place of the error's,
    ``fallback`` (the run's folder) when the error names none (a failed ``write()`` on an open file).
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, StorageError):
            return exc
        code, found = _fault_in(exc)
        if code:
            target = os.fspath(where) if where is not None else found
            under = ""
            if target is None and fallback is not None:
                target, under = os.fspath(fallback), "under "
            if target is None:
                return StorageError(f"{_FAULTS[code]} ({type(exc).__name__}: {' '.join(str(exc).split())})")
            local = not is_remote(target)
            space = f" ({free_space(target)} there)" if local else ""
            hint = {errno.EROFS: "; use a writable location", errno.EACCES: "; check its owner and mode, or use "
                    "another location"}.get(code, "; free some space (or use another location) and run the command again")
            verb = "for" if code == errno.EACCES else "cannot write"  # EACCES may come from a read as well
            return StorageError(f"{_FAULTS[code]}: {verb} {under}{target}{space}{hint}")
        exc = exc.__cause__ or exc.__context__
    return None


def check_writable(directory: PathLike) -> None:
    """Raises :class:`StorageError` unless a file can be written, synced and removed in the local ``directory``.

    Run at start, before anything compiles, so that read-only or full storage is found then and
    not at the first checkpoint. Object stores are not probed here (the workdir lease writes there first).
    """
    if is_remote(directory):
        return
    d = os.fspath(path(directory))
    try:
        fd, probe = tempfile.mkstemp(dir=d, prefix=".write-probe-")
    except OSError as e:
        raise (storage_fault(e, where=d) or e) from None
    try:
        os.write(fd, b"\0" * 4096)  # one page: a disk with less than that left cannot hold a checkpoint
        os.fsync(fd)
    except OSError as e:
        raise (storage_fault(e, where=d) or e) from None
    finally:
        os.close(fd)
        os.remove(probe)


def space_warning(directory: PathLike, need: int, what: str) -> Optional[str]:
    """A warning when the file system of the local ``directory`` has less than ``need`` bytes free, else None.

    Said at start, so that a run that cannot hold its checkpoints is known before it spends its steps.
    """
    if is_remote(directory):
        return None
    try:
        free = shutil.disk_usage(_nearest_folder(directory)).free
    except OSError:
        return None
    if free >= need:
        return None
    return (f"warning: {human_size(free)} free where {what} go ({display(directory)}), less than the "
            f"{human_size(need)} they need: the first save that does not fit will stop the run")


def remove_partial_saves(checkpoints: PathLike) -> None:
    """Removes the ``N.orbax-checkpoint-tmp*`` folders of the local ``checkpoints`` directory.

    Called by the run whose save a full disk cut short (it holds the lock, so no save of another run
    is under way there): the partial folder holds the space the next run needs to start.
    """
    d = os.fspath(checkpoints)
    if is_remote(d) or not os.path.isdir(d):
        return
    for name in os.listdir(d):
        if ".orbax-checkpoint-tmp" in name:
            shutil.rmtree(os.path.join(d, name), ignore_errors=True)
