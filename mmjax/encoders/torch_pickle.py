"""Reads PyTorch checkpoint files (``torch.save``) into numpy, without torch.

Two on-disk formats exist:

* **zip** (torch >= 1.6): a zip archive ``<root>/data.pkl`` (the pickled
  object) plus one raw little-endian file ``<root>/data/<key>`` per storage.
* **legacy** (torch < 1.6): a stream of pickles, ``magic number``,
  ``protocol version``, ``sys_info``, the object itself, then the list of
  storage keys, then for each key an int64 element count followed by the raw
  storage bytes.

Tensors are pickled as ``torch._utils._rebuild_tensor_v2(storage, offset,
size, stride, ...)`` where ``storage`` is a persistent id
``("storage", StorageType, key, location, numel[, view_metadata])``. In the
legacy format the storage bytes come *after* the object, so tensors are first
built as placeholders and materialised once every storage has been read.

The unpickler is restricted: only ``collections.OrderedDict``, the tensor
rebuild functions and the storage types can be named by the file, so loading
an untrusted checkpoint cannot execute arbitrary code.
"""
from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import ml_dtypes
import numpy as np

from mmjax import errors

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

STORAGE_DTYPES: Mapping[str, np.dtype] = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
    "UntypedStorage": np.dtype("u1"),
}


class TorchPickleError(errors.CheckpointError):
    """The file is not a PyTorch checkpoint we can read, or names a forbidden global."""


class _Sealed:
    """A global the file may name: a fresh object per reference that a pickle's BUILD cannot alter,
    so no file changes what a later load sees."""

    def __setstate__(self, state: Any) -> None:
        raise TorchPickleError(f"checkpoint tries to set the state of {self!r} (a BUILD on an allowed global)")


class _StorageType(_Sealed):
    """Stands in for ``torch.FloatStorage`` & co.: only its dtype matters."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = STORAGE_DTYPES[name]

    def __repr__(self) -> str:
        return f"torch.{self.name}"


class _Callable(_Sealed):
    """An allowed constructor or rebuild function."""

    def __init__(self, name: str, fn: Callable[..., Any]):
        self.name, self.fn = name, fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return self.name


class _Storage:
    """A flat typed buffer; ``data`` is filled when its bytes have been read."""

    def __init__(self, dtype: np.dtype, numel: int, key: str):
        self.dtype, self.numel, self.key = dtype, numel, key
        self.data: Optional[np.ndarray] = None


class _LazyTensor:
    """A tensor whose storage bytes may not have been read yet."""

    def __init__(self, storage: _Storage, offset: int, size: Tuple[int, ...], stride: Tuple[int, ...]):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def materialise(self) -> np.ndarray:
        flat = self.storage.data
        if flat is None:
            raise TorchPickleError(f"storage {self.storage.key!r} was never read from the file")
        if len(self.size) != len(self.stride):
            raise TorchPickleError(f"tensor size {self.size} and stride {self.stride} differ in rank")
        if any(s == 0 for s in self.size):
            return np.zeros(self.size, flat.dtype)
        if int(np.prod(self.size, dtype=np.float64)) > flat.size:
            # Only a broadcast (stride 0) view holds more elements than its storage: a tiny file
            # could otherwise ask for any amount of memory. State dicts never hold such views.
            raise TorchPickleError(
                f"tensor of size {self.size} claims more elements than its storage of {flat.size} holds"
            )
        last = self.offset + sum((n - 1) * st for n, st in zip(self.size, self.stride))
        if self.offset < 0 or any(st < 0 for st in self.stride) or last >= flat.size:
            raise TorchPickleError(
                f"tensor (offset {self.offset}, size {self.size}, stride {self.stride}) "
                f"reads outside its storage of {flat.size} elements"
            )
        item = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset:], shape=self.size, strides=tuple(st * item for st in self.stride)
        )
        return np.array(view, order="C")  # a C-contiguous, writable copy independent of the file buffer


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    del requires_grad, backward_hooks, metadata
    return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


def _rebuild_parameter_with_state(data, requires_grad=False, backward_hooks=None, state=None):
    return data


# (module, name) -> a maker of the fresh stand-in the unpickler hands out for each reference.
_ALLOWED: Dict[Tuple[str, str], Callable[[], Any]] = {
    ("collections", "OrderedDict"): lambda: _Callable("collections.OrderedDict", collections.OrderedDict),
    ("torch._utils", "_rebuild_tensor"): lambda: _Callable("torch._utils._rebuild_tensor", _rebuild_tensor),
    ("torch._utils", "_rebuild_tensor_v2"): lambda: _Callable("torch._utils._rebuild_tensor_v2", _rebuild_tensor_v2),
    ("torch._utils", "_rebuild_parameter"): lambda: _Callable("torch._utils._rebuild_parameter", _rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): lambda: _Callable(
        "torch._utils._rebuild_parameter_with_state", _rebuild_parameter_with_state),
}
_ALLOWED.update({("torch", name): (lambda name=name: _StorageType(name)) for name in STORAGE_DTYPES})


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, storage_for: Callable[[Tuple], _Storage]):
        super().__init__(file, encoding="utf-8")
        self._storage_for = storage_for

    def find_class(self, module: str, name: str) -> Any:
        try:
            make = _ALLOWED[(module, name)]
        except KeyError:
            raise TorchPickleError(
                f"checkpoint refers to {module}.{name}, which this reader does not allow "
                "(only state dicts of tensors are supported)"
            ) from None
        return make()

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid or _text(pid[0]) != "storage":
            raise TorchPickleError(f"unsupported persistent id {pid!r} (only tensor storages are)")
        return self._storage_for(pid[1:])


def _text(x: Any) -> str:
    return x.decode("ascii") if isinstance(x, bytes) else str(x)


def _storage_table() -> Tuple[Dict[str, _Storage], Callable[[Tuple], _Storage]]:
    storages: Dict[str, _Storage] = {}

    def storage_for(fields: Tuple) -> _Storage:
        # zip: (type, key, location, numel); legacy: (type, key, location, numel, view_metadata)
        if len(fields) not in (4, 5):
            raise TorchPickleError(f"unexpected storage record {fields!r}")
        storage_type, key, _location, numel = fields[:4]
        if len(fields) == 5 and fields[4] is not None:
            raise TorchPickleError("storage views (pre-1.0 checkpoints) are not supported")
        if not isinstance(storage_type, _StorageType):
            raise TorchPickleError(f"unknown storage type {storage_type!r}")
        key = _text(key)
        if key not in storages:
            storages[key] = _Storage(storage_type.dtype, int(numel), key)
        return storages[key]

    return storages, storage_for


def _materialise(obj: Any) -> Any:
    if isinstance(obj, _LazyTensor):
        return obj.materialise()
    if isinstance(obj, collections.OrderedDict):
        return collections.OrderedDict((k, _materialise(v)) for k, v in obj.items())
    if isinstance(obj, dict):
        return {k: _materialise(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_materialise(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_materialise(v) for v in obj)
    return obj


def _load_zip(raw: bytes, path: str) -> Any:
    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
        if len(pkl) != 1:
            raise TorchPickleError(f"{path}: zip checkpoint without exactly one data.pkl (entries: {names[:5]}...)")
        root = pkl[0][: -len("data.pkl")]
        byteorder = root + "byteorder"
        if byteorder in names and zf.read(byteorder).decode().strip() != "little":
            raise TorchPickleError(f"{path}: big-endian checkpoints are not supported")
        storages, storage_for = _storage_table()
        obj = _Unpickler(io.BytesIO(zf.read(pkl[0])), storage_for).load()
        for key, st in storages.items():
            entry = f"{root}data/{key}"
            if entry not in names:
                raise TorchPickleError(f"{path}: storage {key!r} missing ({entry})")
            buf = zf.read(entry)
            if len(buf) % st.dtype.itemsize:
                raise TorchPickleError(f"{path}: storage {key!r} has {len(buf)} bytes, not a multiple of {st.dtype}")
            st.data = np.frombuffer(buf, dtype=st.dtype)
    return _materialise(obj)


def _load_legacy(raw: bytes, path: str) -> Any:
    f = io.BytesIO(raw)

    def no_storage(fields: Tuple) -> _Storage:
        raise TorchPickleError(f"{path}: storage reference outside the pickled object")

    def plain_load():
        return _Unpickler(f, no_storage).load()

    try:
        magic = plain_load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise TorchPickleError(f"{path}: not a PyTorch checkpoint ({e})") from None
    if magic != LEGACY_MAGIC:
        raise TorchPickleError(f"{path}: not a PyTorch checkpoint (bad magic number {magic!r})")
    protocol = plain_load()
    if protocol != LEGACY_PROTOCOL:
        raise TorchPickleError(f"{path}: unsupported legacy protocol version {protocol}")
    sys_info = plain_load()
    if not sys_info.get("little_endian", True):
        raise TorchPickleError(f"{path}: big-endian checkpoints are not supported")
    storages, storage_for = _storage_table()
    obj = _Unpickler(f, storage_for).load()
    keys = [_text(k) for k in plain_load()]
    for key in keys:
        if key not in storages:
            raise TorchPickleError(f"{path}: storage {key!r} listed but never referenced")
        st = storages[key]
        header = f.read(8)
        if len(header) != 8:
            raise TorchPickleError(f"{path}: truncated before storage {key!r}")
        (numel,) = struct.unpack("<q", header)
        nbytes = numel * st.dtype.itemsize
        buf = f.read(nbytes)
        if len(buf) != nbytes:
            raise TorchPickleError(f"{path}: truncated inside storage {key!r}")
        st.data = np.frombuffer(buf, dtype=st.dtype)
    return _materialise(obj)


def load(path: str) -> Any:
    """Loads a ``torch.save`` file; tensors become numpy arrays (same dtype and shape).

    Handles the zip format (torch >= 1.6) and the legacy pickle-stream format.
    Raises TorchPickleError for anything else or for a file that names a
    global other than the tensor rebuild functions / storage types.
    """
    with open(path, "rb") as fh:
        raw = fh.read()
    if raw[:4] == b"PK\x03\x04":
        return _load_zip(raw, path)
    if raw[:2] == b"\x80\x02" or raw[:1] == b"\x80":
        return _load_legacy(raw, path)
    if len(raw) > 262 and raw[257:262] == b"ustar":
        raise TorchPickleError(f"{path}: tar-format checkpoints (torch < 0.4) are not supported")
    raise TorchPickleError(f"{path}: not a PyTorch checkpoint (unrecognised header {raw[:8]!r})")


def load_state_dict(path: str) -> Dict[str, np.ndarray]:
    """Loads a checkpoint that holds a flat ``{name: tensor}`` state dict."""
    obj = load(path)
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, np.ndarray) for v in obj.values()):
        raise TorchPickleError(f"{path}: expected a state dict of tensors, got {type(obj).__name__}")
    return dict(obj)
