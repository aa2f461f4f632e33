"""What a trained model takes for each modality (:class:`ModalitySpec`), read from its run record.

:func:`specs_from_record` turns a run's config and dataset facts into one spec a
modality; :mod:`mmjax.inference.inputs` prepares raw values to fit them.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from mmjax import errors
from mmjax.data.errors import DataConfigError
from mmjax.train.config_access import as_dict, get

# The dtype each kind has in a batch (and in an exported model's inputs).
# Images and clips stay uint8 (0..255) until normalised, as the pipeline's batches carry them.
BATCH_DTYPES = {"image": "uint8", "video": "uint8", "text": "int32", "audio": "float32", "vector": "float32"}


class InputError(errors.InputError, DataConfigError):
    """An input that cannot be turned into what the model was trained on (names the modality)."""


@dataclasses.dataclass(frozen=True)
class ModalitySpec:
    """What a trained model takes for one modality, from its run record."""

    name: str
    kind: str  # "image" | "text" | "audio" | "vector" | another kind (arrays only)
    shape: Tuple[int, ...]  # per example, as the batch carries it: (H, W, C), (L,), (N,), (D,)...
    dtype: str  # batch dtype: uint8 images, int32 text ids, float32 otherwise
    sequence: bool  # the batch carries a token_mask (B, L) for it
    norm: Optional[Tuple[Tuple[float, ...], Tuple[float, ...]]] = None  # images: (mean, std) per channel
    sample_rate: int = 0  # audio: samples per second (0: not recorded)
    scale: float = 32768.0  # audio: integer samples are divided by it
    tokenizer: Optional[str] = None  # text: the tokenizer as JSON (None: the byte tokenizer)
    tokenizer_dir: Optional[str] = None  # text: data.modalities.<m>.tokenizer, a checkpoint's directory
    standardized: bool = False  # vectors z-scored by the dataset's statistics in training
    zscore: Optional[Tuple[Tuple[float, ...], Tuple[float, ...]]] = None  # those statistics (mean, std), (D,) each


def _dataset_modalities(data_info: Mapping[str, Any]) -> Dict[str, Dict[str, Any]]:
    """modality -> {kind, shape, dtype, sequence}; synthetic vector sources record only ``dims``."""
    mods = data_info.get("modalities") or {}
    if isinstance(mods, Mapping):
        return {m: dict(v) for m, v in mods.items()}
    dims = dict(data_info.get("dims") or {})
    out = {}
    for m in mods:
        if m not in dims:
            raise InputError(f"modality {m!r}: the run record does not describe its input (no kind or shape)")
        out[m] = {"kind": "vector", "shape": (int(dims[m]),), "dtype": "float32", "sequence": False}
    return out


def specs_from_record(config: Any, data_info: Mapping[str, Any], names: Sequence[str]) -> Dict[str, ModalitySpec]:
    """The :class:`ModalitySpec` of each of ``names`` from a run's config and dataset facts."""
    mods = _dataset_modalities(data_info)
    data_mods = as_dict(get(get(config, "data"), "modalities"))
    norms = dict(data_info.get("image_norms") or {})
    zscores = dict(data_info.get("standardize") or {})
    out = {}
    for m in names:
        if m not in mods:
            raise InputError(f"modality {m!r}: not among the dataset's modalities {sorted(mods)}")
        mi, mc = mods[m], as_dict(data_mods.get(m))
        kind = str(mi["kind"])
        norm = None
        if kind in ("image", "video"):
            mean, std = norms.get(m) or (mc.get("mean", (0.5,)), mc.get("std", (0.5,)))
            norm = (tuple(float(v) for v in mean), tuple(float(v) for v in std))
        out[m] = ModalitySpec(
            name=m, kind=kind, shape=tuple(int(d) for d in mi["shape"]),
            dtype=BATCH_DTYPES.get(kind, str(mi.get("dtype", "float32"))), sequence=bool(mi.get("sequence")),
            norm=norm, sample_rate=int(data_info.get("sample_rate") or 0), scale=float(mc.get("scale", 32768.0)),
            tokenizer=data_info.get("tokenizer") if kind == "text" else None,
            tokenizer_dir=mc.get("tokenizer") if kind == "text" else None,
            standardized=bool(mc.get("standardize")),
            zscore=(tuple(zscores[m]["mean"]), tuple(zscores[m]["std"])) if m in zscores else None)
    return out
