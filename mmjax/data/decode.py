"""Stored examples -> numpy columns for a batch of rows (no tensorflow).

Columns: for each modality m, ``m`` (N, ...) (images and video clips uint8, text int32 ids,
audio in its stored dtype, vectors float32) and, for text and audio,
``m__length`` (N,) int32 (0 for an empty text), for text tokenised with a checkpoint's
tokenizer ``m__mask`` (N, L) bool (its attention mask: its pad id need not be 0), for
images ``m__undecodable`` (N,) bool (bytes that failed to decode: a zero image), for
vectors with a ``present`` feature ``m__present`` (N,) bool (False: a zero vector); plus ``label``. What is done
with bad examples is the pipeline's choice (:mod:`mmjax.data.bad_examples`).
"""
from __future__ import annotations

import io
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from mmjax.data import preprocess as pp
from mmjax.data.errors import DataConfigError

Columns = Dict[str, np.ndarray]


def _get(ex: Mapping[str, Any], path: str):
    for part in path.split("/"):
        if part not in ex:
            raise DataConfigError(f"feature path {path!r}: no {part!r} among {sorted(ex)}")
        ex = ex[part]
    return ex


def decode_image(value: Any, shape: Tuple[int, int, int], size: Optional[Sequence[int]]) -> Optional[np.ndarray]:
    """Encoded bytes (or an already decoded array) -> uint8 (H, W, C), resized to ``size``
    (antialiased bilinear, as tf.image.resize(antialias=True)); None when the bytes do not decode
    or decode to another shape than ``shape`` without a ``size``."""
    from PIL import Image

    c = shape[-1]
    if isinstance(value, np.ndarray) and value.dtype == np.uint8 and value.ndim == 3:
        img = Image.fromarray(value[..., 0] if value.shape[-1] == 1 else value)
    else:
        try:
            img = Image.open(io.BytesIO(bytes(value)))
            img.load()
        except Exception:  # PIL raises several types for truncated or foreign bytes
            return None
    mode = "L" if c == 1 else "RGB"
    if img.mode != mode:  # converting to the mode it has would only copy
        img = img.convert(mode)
    if size:
        h, w = int(size[0]), int(size[1])
        if img.size != (w, h):
            img = img.resize((w, h), Image.BILINEAR)
    x = np.asarray(img, np.uint8)
    x = x[..., None] if x.ndim == 2 else x
    want = (int(size[0]), int(size[1]), c) if size else tuple(shape)
    if None in shape and not size:
        want = x.shape
    return x if x.shape == want else None


def _image_column(values: List[Any], shape, size) -> Tuple[np.ndarray, np.ndarray]:
    h, w = (int(size[0]), int(size[1])) if size else (shape[0], shape[1])
    decoded = [decode_image(v, shape, size) for v in values]
    if not size and (h is None or w is None):  # variable-size images without a target size
        good = [x for x in decoded if x is not None]
        if good and any(x.shape != good[0].shape for x in good):
            raise DataConfigError("images of different sizes in one batch: set the modality's size (H, W)")
        h, w = good[0].shape[:2] if good else (1, 1)
    out = np.zeros((len(values), h, w, shape[-1]), np.uint8)
    bad = np.zeros(len(values), bool)
    for i, x in enumerate(decoded):
        if x is None:
            bad[i] = True
        else:
            out[i] = x
    return out, bad


def _text(value: Any, index: int) -> Any:
    if isinstance(value, (bytes, str)):
        return value
    seq = list(np.asarray(value, dtype=object).reshape(-1))  # a sequence of texts (COCO's captions)
    return seq[index] if len(seq) > index else b""


def _label(value: Any, kind: str, num_classes: int) -> np.ndarray:
    if kind == "multi_hot":
        y = np.zeros((num_classes,), np.float32)
        y[np.asarray(value, np.int64).reshape(-1)] = 1.0
        return y
    return np.asarray(value, np.int32)


def _vector_column(values: List[Any], stats, present: Optional[np.ndarray]) -> np.ndarray:
    x = np.stack([np.asarray(v, np.float32) for v in values])
    if stats is not None:
        x = (x - stats[0]) / stats[1]
    if present is not None:  # an absent vector is zeros, standardised or not, as in the batches
        x = np.where(present.reshape((-1,) + (1,) * (x.ndim - 1)), x, 0)
    return x.astype(np.float32)


def columns(cfg, raws: Sequence[Mapping[str, Any]], label_names: Sequence[str],
            image_shapes: Mapping[str, Tuple[int, ...]],
            standardize: Optional[Mapping[str, Tuple[np.ndarray, np.ndarray]]] = None,
            tokenizers: Optional[Mapping[str, Any]] = None) -> Columns:
    """The columns of ``raws`` (stored examples with encoded images), one row per example.

    ``standardize``: vector modality -> (mean, std) float32 (D,), applied as (x - mean) / std.
    ``tokenizers``: text modality -> its checkpoint tokenizer (:func:`preprocess.checkpoint_tokenizer`,
    for the modalities whose config sets ``tokenizer``; the others use the byte tokenizer)."""
    cols: Columns = {}
    for m, mc in sorted(cfg.modalities.items()):
        values = [_get(ex, mc.feature) for ex in raws]
        if mc.kind == "image":
            cols[m], cols[m + "__undecodable"] = _image_column(values, image_shapes[m], mc.size)
        elif mc.kind == "text":
            texts = [_text(v, int(mc.index)) for v in values]
            if m in (tokenizers or {}):
                cols[m], cols[m + "__mask"], cols[m + "__length"] = pp.tokenize_checkpoint(tokenizers[m], texts)
                continue
            cols[m], mask = pp.tokenize_bytes(texts, int(mc.max_len))
            # An empty text has length 0 (BOS/EOS do not count); bad_examples decides its fate.
            empty = np.array([len(t) == 0 for t in texts], bool)
            cols[m + "__length"] = np.where(empty, 0, mask.sum(1)).astype(np.int32)
        elif mc.kind == "audio":
            waves = [np.asarray(v).reshape(-1) for v in values]
            dtype = waves[0].dtype if waves else np.float32
            cols[m], cols[m + "__length"] = pp.pad_or_crop(waves, int(mc.length), dtype)
        elif mc.kind == "video":  # (N, F, H, W, C) uint8, stored as a fixed-shape tensor
            cols[m] = np.stack([np.asarray(v, np.uint8) for v in values])
        else:
            present = None
            if mc.get("present"):
                present = cols[m + "__present"] = np.array([bool(_get(ex, mc.present)) for ex in raws], bool)
            cols[m] = _vector_column(values, (standardize or {}).get(m), present)
    if cfg.label:
        cols["label"] = np.stack([_label(_get(ex, cfg.label), cfg.label_kind, len(label_names)) for ex in raws])
    return cols
