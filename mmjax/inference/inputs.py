"""Raw inputs (files, strings, arrays) -> a model-ready batch, prepared as the data pipeline prepares them.

What each modality takes (one example, or a list of them for a batch):

* image: a PNG/JPEG path or its bytes, or a uint8 array (H, W, C) / (H, W) / (B, H, W, C);
  decoded and resized to the trained (H, W) with the pipeline's own decoder
  (:func:`mmjax.data.decode.decode_image`); the batch carries uint8 (B, H, W, C).
* audio: a WAV path, or a 1-D waveform (N,) / (B, N) (float in [-1, 1], or integer samples
  divided by the modality's ``scale``); resampled to the trained sample rate (a note says so),
  cropped (start kept) or zero-padded to the trained length; token_mask marks real samples.
* text: a string (or bytes), tokenised with the run's tokenizer to the trained ``max_len``, or int
  ids (L,) / (B, L); token_mask = ids != 0; an empty text is missing (zero ids, no real token,
  as the pipeline's default ``bad_examples="missing"`` leaves it). A run whose data config sets
  the modality's ``tokenizer`` (a model directory) tokenises strings as its pipeline did, with
  that ``tokenizer.json`` and its mask; ids given then are all real tokens, padded with its pad id.
* vector and anything else (video...): a ``.npy`` path or an array of exactly the trained
  per-example shape (with or without the batch dimension).

Errors are :class:`InputError`: one line naming the modality and the problem. What each modality
must become comes from its :class:`ModalitySpec` (:mod:`mmjax.inference.input_specs`).
"""
from __future__ import annotations

import functools
import numbers
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from mmjax import errors
from mmjax.inference.input_specs import (  # noqa: F401 (re-exported: their historical import path)
    BATCH_DTYPES, InputError, ModalitySpec, specs_from_record)


# --- one modality ---------------------------------------------------------------------------------------


def _fail(spec: ModalitySpec, problem: str) -> InputError:
    return InputError(f"modality {spec.name!r} ({spec.kind}): {problem}")


def _is_path(value: Any) -> bool:
    return isinstance(value, (str, os.PathLike))


def _examples(spec: ModalitySpec, value: Any, example_ndim: int) -> List[Any]:
    """``value`` as a list of single examples: a list/tuple is a batch (unless it is a list of numbers),
    an array with one more dimension than an example is a batch, anything else is one example."""
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, numbers.Number) for v in value):
            return [np.asarray(value)]
        if not value:
            raise _fail(spec, "got an empty list")
        return list(value)
    if isinstance(value, np.ndarray) and value.ndim == example_ndim + 1:
        return list(value)
    return [value]


def _npy(spec: ModalitySpec, path: Any) -> np.ndarray:
    if not os.path.isfile(path):
        raise _fail(spec, f"no such file {os.fspath(path)!r}")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise _fail(spec, f"cannot read {os.fspath(path)!r} as a .npy array ({e})") from None


def _image(spec: ModalitySpec, value: Any) -> np.ndarray:
    """One image -> uint8 (H, W, C) at the trained size."""
    from mmjax.data.decode import decode_image

    h, w, c = spec.shape
    where = "the bytes"
    if _is_path(value):
        if str(value).endswith(".npy"):
            value = _npy(spec, value)
        else:
            if not os.path.isfile(value):
                raise _fail(spec, f"no such file {os.fspath(value)!r}")
            where = repr(os.fspath(value))
            with open(value, "rb") as f:
                value = f.read()
    if isinstance(value, np.ndarray):
        if value.dtype != np.uint8:
            raise _fail(spec, f"image arrays must be uint8 (H, W, C), got {value.dtype}; float batches that are "
                              "already normalised go to logits() directly")
        if value.ndim == 2:
            value = value[..., None]
        if value.ndim != 3 or value.shape[-1] not in (1, 3, 4):
            raise _fail(spec, f"expected an image (H, W, C) with 1, 3 or 4 channels, got shape {value.shape}")
        where = f"the array of shape {value.shape}"
    elif not isinstance(value, (bytes, bytearray)):
        raise _fail(spec, f"expected an image file path, bytes or a uint8 array, got {type(value).__name__}")
    x = decode_image(value, (h, w, c), (h, w))
    if x is None:
        raise _fail(spec, f"cannot decode {where} as an image")
    return x


def read_wav(spec: ModalitySpec, path: Any) -> Tuple[np.ndarray, int]:
    """A WAV file -> (float32 mono waveform in [-1, 1], its sample rate)."""
    from scipy.io import wavfile

    if not os.path.isfile(path):
        raise _fail(spec, f"no such file {os.fspath(path)!r}")
    try:
        rate, data = wavfile.read(path)
    except (ValueError, OSError) as e:
        raise _fail(spec, f"cannot read {os.fspath(path)!r} as a WAV file ({e})") from None
    if data.dtype == np.uint8:
        x = (data.astype(np.float32) - 128.0) / 128.0
    elif np.issubdtype(data.dtype, np.integer):
        x = data.astype(np.float32) / float(-np.iinfo(data.dtype).min)
    else:
        x = data.astype(np.float32)
    return (x.mean(axis=1) if x.ndim == 2 else x), int(rate)


def _audio(spec: ModalitySpec, value: Any, notes: List[str]) -> np.ndarray:
    """One clip -> float32 (n,) at the trained sample rate, before crop/pad."""
    rate = spec.sample_rate
    if _is_path(value) and not str(value).endswith(".npy"):
        x, rate = read_wav(spec, value)
    else:
        x = _npy(spec, value) if _is_path(value) else np.asarray(value)
        if x.ndim != 1 or not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
            raise _fail(spec, f"expected a 1-D waveform, got shape {x.shape} of {x.dtype}")
        x = x.astype(np.float32) / np.float32(spec.scale) if np.issubdtype(x.dtype, np.integer) else x
    if spec.sample_rate and rate != spec.sample_rate:
        from mmjax.data.speech import resample

        notes.append(f"{spec.name}: resampled {rate} Hz -> {spec.sample_rate} Hz (the trained sample rate)")
        x = resample(x, rate, spec.sample_rate)
    return np.asarray(x, np.float32)


@functools.lru_cache(maxsize=8)
def _checkpoint_tokenizer(model_dir: str, max_len: int):
    from mmjax.data import preprocess as pp

    return pp.checkpoint_tokenizer(model_dir, max_len, "the run's data.modalities tokenizer")


def _text(spec: ModalitySpec, value: Any) -> Tuple[np.ndarray, np.ndarray, bool]:
    """One text (or ids) -> (int32 ids (L,), token_mask (L,) bool, present)."""
    from mmjax import tokenizer as tok

    (max_len,) = spec.shape
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    ckpt = None
    if spec.tokenizer_dir:
        try:
            ckpt = _checkpoint_tokenizer(str(spec.tokenizer_dir), max_len)
        except errors.MmjaxError as e:
            raise _fail(spec, str(e)) from None
    if isinstance(value, str) and ckpt is not None:
        from mmjax.data import preprocess as pp

        ids, mask, lengths = pp.tokenize_checkpoint(ckpt, [value])  # as the pipeline's batches
        return ids[0], mask[0], bool(lengths[0] > 0)
    if isinstance(value, str):
        try:
            t = tok.from_json(spec.tokenizer) if spec.tokenizer else tok.ByteTokenizer()
        except (ValueError, KeyError, TypeError):
            raise _fail(spec, "the run record's tokenizer is not readable JSON; pass token ids instead") from None
        ids, _ = t.encode(value, max_len)
        return ids.astype(np.int32), ids != 0, len(value) > 0  # an empty text is missing, as in the pipeline
    ids = np.asarray(value)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise _fail(spec, f"expected a string or 1-D integer token ids, got {type(value).__name__} {ids.shape}")
    out = np.full((max_len,), ckpt.pad_id if ckpt is not None else 0, np.int32)
    n = min(len(ids), max_len)
    out[:n] = ids[:max_len]
    if ckpt is not None:  # the given ids are the tokens (special ones included); the rest is padding
        return out, np.arange(max_len) < n, n > 0
    return out, out != 0, bool((out != 0).any())


def _array(spec: ModalitySpec, value: Any) -> np.ndarray:
    """One vector (or other array input) of exactly the trained shape."""
    x = _npy(spec, value) if _is_path(value) else np.asarray(value)
    if x.shape != spec.shape:
        raise _fail(spec, f"expected shape {spec.shape} per example (or (B, {', '.join(map(str, spec.shape))})), "
                          f"got {x.shape}")
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise _fail(spec, f"expected numbers, got dtype {x.dtype}")
    return x.astype(spec.dtype)


# --- a batch ------------------------------------------------------------------------------------------------

Column = Tuple[np.ndarray, Optional[np.ndarray], np.ndarray]  # x (B, ...), token_mask (B, L) or None, present (B,)


def column(spec: ModalitySpec, value: Any, notes: List[str]) -> Column:
    """One modality's value(s) -> (x (B, *spec.shape) spec.dtype, token_mask (B, L) bool or None, present (B,))."""
    if _is_path(value) and str(value).endswith(".npy") and not (spec.kind == "text" and isinstance(value, str)):
        value = _npy(spec, value)  # may hold a batch
    if spec.kind == "image":
        xs = [_image(spec, v) for v in _examples(spec, value, 3)]
        return np.stack(xs), None, np.ones(len(xs), bool)
    if spec.kind == "audio":
        (length,) = spec.shape
        waves = [_audio(spec, v, notes) for v in _examples(spec, value, 1)]
        longest = max(w.size for w in waves)
        if longest > length:
            notes.append(f"{spec.name}: cropped {longest} samples to {length} (the trained length; start kept)")
        x = np.zeros((len(waves), length), np.float32)
        lengths = np.array([min(w.size, length) for w in waves], np.int32)
        for i, w in enumerate(waves):
            x[i, :lengths[i]] = w[:length]
        return x, np.arange(length)[None, :] < lengths[:, None], lengths > 0
    if spec.kind == "text":
        if isinstance(value, np.ndarray) and value.ndim == 2:
            rows = list(value)
        elif isinstance(value, (list, tuple)) and value and not all(isinstance(v, numbers.Number) for v in value):
            rows = list(value)
        else:
            rows = [value]
        ids, masks, present = zip(*(_text(spec, v) for v in rows))
        present = np.array(present, bool)
        # An empty text is a missing modality: zero ids and no real token, as the pipeline's batches have it.
        return np.where(present[:, None], np.stack(ids), 0), np.stack(masks) & present[:, None], present
    xs = np.stack([_array(spec, v) for v in _examples(spec, value, len(spec.shape))])
    if spec.zscore is not None:  # as the batches were: (x - mean) / std with the dataset's train statistics
        xs = ((xs - np.asarray(spec.zscore[0], np.float32)) / np.asarray(spec.zscore[1], np.float32)).astype(xs.dtype)
    elif spec.standardized:
        notes.append(f"{spec.name}: used as given; training z-scored it with the dataset's statistics, which this "
                     "run record does not hold")
    mask = np.ones((len(xs), spec.shape[0]), bool) if spec.sequence else None
    return xs, mask, np.ones(len(xs), bool)


def to_batch(specs: Mapping[str, ModalitySpec], inputs: Mapping[str, Any]) -> Tuple[Dict[str, Any], List[str]]:
    """Raw ``inputs`` (modality -> value(s)) -> (batch, notes).

    The batch: ``inputs`` {m: (B, *shape)} for every modality in ``specs`` (uint8 images, not yet
    normalised), ``modality_mask`` {m: (B,) bool} (False for a modality left out of ``inputs``:
    zero inputs), ``token_mask`` {m: (B, L) bool} for sequence modalities. ``notes``: what was
    changed to fit the trained model (resampling, cropping), one line each.
    """
    unknown = sorted(set(inputs) - set(specs))
    if unknown:
        raise InputError(f"unknown modality {unknown[0]!r}: this model takes {', '.join(sorted(specs))}")
    if not inputs:
        raise InputError(f"no inputs: give at least one of the modalities {', '.join(sorted(specs))}")
    notes: List[str] = []
    cols = {m: column(specs[m], v, notes) for m, v in sorted(inputs.items())}
    sizes = {m: len(c[0]) for m, c in cols.items()}
    if len(set(sizes.values())) > 1:
        raise InputError("modalities have different batch sizes: " + ", ".join(f"{m} {n}" for m, n in sizes.items()))
    b = next(iter(sizes.values()))
    batch: Dict[str, Any] = {"inputs": {}, "modality_mask": {}}
    for m, spec in sorted(specs.items()):
        if m in cols:
            x, mask, present = cols[m]
        else:
            x, present = np.zeros((b,) + spec.shape, spec.dtype), np.zeros(b, bool)
            mask = np.zeros((b, spec.shape[0]), bool) if spec.sequence else None
        batch["inputs"][m] = x
        batch["modality_mask"][m] = present
        if mask is not None:
            batch.setdefault("token_mask", {})[m] = mask
    return batch, notes
