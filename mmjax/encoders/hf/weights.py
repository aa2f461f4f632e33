"""Reading a local Hugging Face model directory into numpy, without torch or transformers.

``config.json`` is read as JSON; the weights come from ``model.safetensors``
(through the ``safetensors`` numpy API) or, failing that, ``pytorch_model.bin``
(through :mod:`mmjax.encoders.torch_pickle`, a restricted unpickler: a file can
name no global besides the tensor rebuild functions, so it cannot run code).
Sharded checkpoints (``model.safetensors.index.json``) are read shard by shard.

:class:`StateDict` turns torch layouts into the Flax ones the families use:
``Linear`` weights (out, in) -> kernels (in, out), attention projections split
into (embed, heads, head_dim) as :class:`mmjax.layers.MultiHeadAttention`
stores them, conv weights (O, I, kh, kw) -> (kh, kw, I, O) (and 1D / 3D alike).
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any, Dict, Mapping

import numpy as np

from mmjax import errors


class HFCheckpointError(errors.CheckpointError):
    """A model directory that cannot be converted: missing files or tensors, unsupported config."""


class HFUnavailableError(errors.DependencyError, HFCheckpointError):
    """A library needed to read a checkpoint (safetensors, tokenizers) is not installed."""


def import_optional(module: str, why: str) -> Any:
    """``importlib.import_module(module)``, or a one-line error naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise HFUnavailableError(f"{why} needs {module.split('.')[0]!r}: pip install 'mmjax[pretrained]'") from e


def read_config(model_dir: str) -> Dict[str, Any]:
    """The directory's ``config.json`` as a dict."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise HFCheckpointError(f"{model_dir}: no config.json (not a Hugging Face model directory)")
    return json.loads(path.read_text())


def read_json(model_dir: str, name: str) -> Dict[str, Any]:
    """``model_dir/name`` as a dict ({} when the file is absent)."""
    path = Path(model_dir) / name
    return json.loads(path.read_text()) if path.is_file() else {}


def read_state_dict(model_dir: str) -> Dict[str, np.ndarray]:
    """All tensors of the checkpoint in ``model_dir``: name -> numpy array (as stored)."""
    d = Path(model_dir)
    if (d / "model.safetensors").is_file() or (d / "model.safetensors.index.json").is_file():
        st = import_optional("safetensors.numpy", "reading model.safetensors")
        if (d / "model.safetensors").is_file():
            return dict(st.load_file(str(d / "model.safetensors")))
        index = json.loads((d / "model.safetensors.index.json").read_text())
        state: Dict[str, np.ndarray] = {}
        for shard in sorted(set(index["weight_map"].values())):
            state.update(st.load_file(str(d / shard)))
        return state
    if (d / "pytorch_model.bin").is_file():
        from mmjax.encoders import torch_pickle

        return torch_pickle.load_state_dict(str(d / "pytorch_model.bin"))
    raise HFCheckpointError(f"{model_dir}: no model.safetensors or pytorch_model.bin")


class StateDict:
    """A checkpoint's tensors under ``prefix``, fetched as float32 numpy in Flax layouts."""

    def __init__(self, state: Mapping[str, np.ndarray], prefix: str = "", where: str = "checkpoint"):
        self.state, self.prefix, self.where = state, prefix, where

    def sub(self, prefix: str) -> "StateDict":
        return StateDict(self.state, self.prefix + prefix, self.where)

    def has(self, name: str) -> bool:
        return self.prefix + name in self.state

    def get(self, name: str) -> np.ndarray:
        key = self.prefix + name
        if key not in self.state:
            raise HFCheckpointError(f"{self.where}: no tensor {key!r} in the checkpoint")
        return np.asarray(self.state[key], np.float32)

    def linear(self, name: str, bias: bool = True) -> Dict[str, np.ndarray]:
        """torch Linear (out, in) -> {"kernel": (in, out), "bias": (out,)}."""
        out = {"kernel": self.get(f"{name}.weight").T}
        if bias:
            out["bias"] = self.get(f"{name}.bias")
        return out

    def layer_norm(self, name: str) -> Dict[str, np.ndarray]:
        return {"scale": self.get(f"{name}.weight"), "bias": self.get(f"{name}.bias")}

    def heads(self, name: str, num_heads: int) -> Dict[str, np.ndarray]:
        """A q/k/v Linear (N*H, D) -> {"kernel": (D, N, H), "bias": (N, H)}."""
        w = self.get(f"{name}.weight")
        b = self.get(f"{name}.bias") if self.has(f"{name}.bias") else np.zeros(w.shape[0], np.float32)
        return {"kernel": w.T.reshape(w.shape[1], num_heads, -1), "bias": b.reshape(num_heads, -1)}

    def merge(self, name: str, num_heads: int) -> Dict[str, np.ndarray]:
        """The attention output Linear (D, N*H) -> {"kernel": (N, H, D), "bias": (D,)}."""
        w = self.get(f"{name}.weight")
        return {"kernel": w.T.reshape(num_heads, -1, w.shape[0]), "bias": self.get(f"{name}.bias")}

    def conv(self, name: str, bias: bool = True) -> Dict[str, np.ndarray]:
        """torch Conv1d/2d/3d (O, I, *k) -> {"kernel": (*k, I, O), "bias": (O,)}: (kh, kw, I, O) for 2D."""
        w = self.get(f"{name}.weight")
        out = {"kernel": w.transpose(*range(2, w.ndim), 1, 0)}
        if bias:
            out["bias"] = self.get(f"{name}.bias")
        return out


def find_prefix(state: Mapping[str, Any], candidates, probe: str) -> str:
    """The first of ``candidates`` under which ``probe`` is a tensor of ``state``."""
    for p in candidates:
        if p + probe in state:
            return p
    raise HFCheckpointError(f"checkpoint has no {probe!r} under any of the prefixes {list(candidates)}")
