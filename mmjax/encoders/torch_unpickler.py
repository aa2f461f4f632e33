"""The restricted unpickler of :mod:`mmjax.encoders.torch_pickle`: tensors as lazy numpy views.

Tensors are pickled as ``torch._utils._rebuild_tensor_v2(storage, offset,
size, stride, ...)`` where ``storage`` is a persistent id
``("storage", StorageType, key, location, numel[, view_metadata])``. Tensors
are built as placeholders over a :class:`Storage` and materialised once every
storage's bytes have been read (in the legacy format they come after the object).

Only ``collections.OrderedDict``, the tensor rebuild functions and the storage
types can be named by the file, so loading an untrusted checkpoint cannot
execute arbitrary code.
"""
from __future__ import annotations

import collections
import pickle
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import ml_dtypes
import numpy as np

from mmjax import errors

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


class Storage:
    """A flat typed buffer; ``data`` is filled when its bytes have been read."""

    def __init__(self, dtype: np.dtype, numel: int, key: str):
        self.dtype, self.numel, self.key = dtype, numel, key
        self.data: Optional[np.ndarray] = None


class _LazyTensor:
    """A tensor whose storage bytes may not have been read yet."""

    def __init__(self, storage: Storage, offset: int, size: Tuple[int, ...], stride: Tuple[int, ...]):
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


def _rebuild_tensor(storage, storage_offset, size, stride, *unused, **unused_kw):
    """``torch._utils._rebuild_tensor`` and ``_rebuild_tensor_v2`` (requires_grad, hooks, metadata unused)."""
    return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *unused, **unused_kw):
    """``torch._utils._rebuild_parameter[_with_state]``: a parameter is its tensor here."""
    return data


# The globals a file may name -> what they do here; the unpickler hands out a fresh stand-in per reference.
_CALLABLES: Dict[str, Callable[..., Any]] = {
    "collections.OrderedDict": collections.OrderedDict,
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
}
_ALLOWED: Dict[Tuple[str, str], Callable[[], Any]] = {
    tuple(q.rsplit(".", 1)): (lambda q=q, fn=fn: _Callable(q, fn)) for q, fn in _CALLABLES.items()
}
_ALLOWED.update({("torch", name): (lambda name=name: _StorageType(name)) for name in STORAGE_DTYPES})


class Unpickler(pickle.Unpickler):
    """Names only the allowed globals; a persistent id becomes ``storage_for(its fields)``."""

    def __init__(self, file, storage_for: Callable[[Tuple], Storage]):
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
        if not isinstance(pid, tuple) or not pid or text(pid[0]) != "storage":
            raise TorchPickleError(f"unsupported persistent id {pid!r} (only tensor storages are)")
        return self._storage_for(pid[1:])


def text(x: Any) -> str:
    """A pickled name (str, or bytes from a protocol-2 file) -> str."""
    return x.decode("ascii") if isinstance(x, bytes) else str(x)


def storage_table() -> Tuple[Dict[str, Storage], Callable[[Tuple], Storage]]:
    """(key -> Storage, the unpickler's storage_for): one Storage per key however often it is referenced."""
    storages: Dict[str, Storage] = {}

    def storage_for(fields: Tuple) -> Storage:
        # zip: (type, key, location, numel); legacy: (type, key, location, numel, view_metadata)
        if len(fields) not in (4, 5):
            raise TorchPickleError(f"unexpected storage record {fields!r}")
        storage_type, key, _location, numel = fields[:4]
        if len(fields) == 5 and fields[4] is not None:
            raise TorchPickleError("storage views (pre-1.0 checkpoints) are not supported")
        if not isinstance(storage_type, _StorageType):
            raise TorchPickleError(f"unknown storage type {storage_type!r}")
        key = text(key)
        if key not in storages:
            storages[key] = Storage(storage_type.dtype, int(numel), key)
        return storages[key]

    return storages, storage_for


def materialise(obj: Any) -> Any:
    """The unpickled object with every lazy tensor replaced by its numpy array (all storages read)."""
    if isinstance(obj, _LazyTensor):
        return obj.materialise()
    if isinstance(obj, collections.OrderedDict):
        return collections.OrderedDict((k, materialise(v)) for k, v in obj.items())
    if isinstance(obj, dict):
        return {k: materialise(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [materialise(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(materialise(v) for v in obj)
    return obj
