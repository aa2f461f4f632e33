"""Reads PyTorch checkpoint files (``torch.save``) into numpy, without torch.

Two on-disk formats exist:

* **zip** (torch >= 1.6): a zip archive ``<root>/data.pkl`` (the pickled
  object) plus one raw little-endian file ``<root>/data/<key>`` per storage.
* **legacy** (torch < 1.6): a stream of pickles, ``magic number``,
  ``protocol version``, ``sys_info``, the object itself, then the list of
  storage keys, then for each key an int64 element count followed by the raw
  storage bytes.

The object is read by a restricted unpickler (:mod:`mmjax.encoders.torch_unpickler`):
only ``collections.OrderedDict``, the tensor rebuild functions and the storage
types can be named by the file, so loading an untrusted checkpoint cannot
execute arbitrary code.
"""
from __future__ import annotations

import io
import pickle
import struct
import zipfile
from typing import Any, Dict, Mapping, Tuple

import numpy as np

from mmjax.encoders.torch_unpickler import (  # noqa: F401 (STORAGE_DTYPES re-exported)
    STORAGE_DTYPES, Storage, TorchPickleError, Unpickler, materialise, storage_table, text)

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001


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
        storages, storage_for = storage_table()
        obj = Unpickler(io.BytesIO(zf.read(pkl[0])), storage_for).load()
        for key, st in storages.items():
            entry = f"{root}data/{key}"
            if entry not in names:
                raise TorchPickleError(f"{path}: storage {key!r} missing ({entry})")
            buf = zf.read(entry)
            if len(buf) % st.dtype.itemsize:
                raise TorchPickleError(f"{path}: storage {key!r} has {len(buf)} bytes, not a multiple of {st.dtype}")
            st.data = np.frombuffer(buf, dtype=st.dtype)
    return materialise(obj)


def _load_legacy(raw: bytes, path: str) -> Any:
    f = io.BytesIO(raw)

    def no_storage(fields: Tuple) -> Storage:
        raise TorchPickleError(f"{path}: storage reference outside the pickled object")

    def plain_load():
        return Unpickler(f, no_storage).load()

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
    storages, storage_for = storage_table()
    obj = Unpickler(f, storage_for).load()
    keys = [text(k) for k in plain_load()]
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
    return materialise(obj)


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
