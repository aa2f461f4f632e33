"""Per-modality preprocessing in numpy: tokenising, padding, corruption, augmentation, dropout.

Everything random here takes an explicit ``np.random.Generator``-like object
with a leading batch dimension; the pipeline passes :class:`mmjax.data.draws.RowDraws`,
whose rows draw from per-example generators, so an example's draws do not
depend on the process count and a resumed iterator redraws the same numbers.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

from mmjax import tokenizer as _tok
from mmjax.data.draws import normal_rows
from mmjax.data.errors import DataConfigError

# Text uses the library's byte tokenizer (mmjax.tokenizer.ByteTokenizer: byte b -> b + 4,
# pad 0 / unk 1 / bos 2 / eos 3, vocab 260), so ids agree with the text encoders' vocab.
PAD_ID = _tok.PAD_ID
BYTE_VOCAB_SIZE = _tok.ByteTokenizer().vocab_size


def tokenize_bytes(texts: Sequence, max_len: int) -> Tuple[np.ndarray, np.ndarray]:
    """Texts (str or UTF-8 bytes) -> ids (N, max_len) int32, mask (N, max_len) bool, with BOS/EOS,
    truncated (EOS kept last) or right-padded with 0."""
    texts = [t.decode("utf-8", errors="replace") if isinstance(t, bytes) else str(t) for t in texts]
    return _tok.ByteTokenizer().encode_batch(texts, max_len)


def checkpoint_tokenizer(model_dir: str, max_len: int, where: str):
    """The :class:`mmjax.encoders.hf.preprocess.TextPreprocess` of ``model_dir``'s tokenizer.json at
    ``max_len`` (``where`` names the config key in errors). Built once per reader: loading parses the file."""
    from mmjax.encoders.hf import HFCheckpointError, HFUnavailableError, text_preprocess
    from mmjax.encoders.hf.weights import read_json

    try:
        tp = text_preprocess(str(model_dir), int(max_len))
    except HFUnavailableError:
        raise
    except HFCheckpointError as e:
        raise DataConfigError(f"{where}: {e}") from None
    text_cfg = read_json(str(model_dir), "config.json")
    positions = (text_cfg.get("text_config") or text_cfg).get("max_position_embeddings")
    if positions and int(max_len) > int(positions):  # JAX clamps the position lookup: wrong, not an error
        raise DataConfigError(f"{where}: max_len {max_len} exceeds the checkpoint's {positions} positions")
    return tp


def tokenize_checkpoint(tp, texts: Sequence) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Texts (str or UTF-8 bytes) -> ids (N, L) int32, mask (N, L) bool, lengths (N,) int32 with a
    checkpoint's tokenizer; an empty text has length 0 (the special tokens it still gets do not count)."""
    texts = [t.decode("utf-8", errors="replace") if isinstance(t, bytes) else str(t) for t in texts]
    ids, mask, lengths = tp.encode(texts)
    empty = np.array([len(t) == 0 for t in texts], bool)
    return ids, mask, np.where(empty, 0, lengths).astype(np.int32)


def pad_or_crop(waves: Sequence[np.ndarray], length: int, dtype=np.float32) -> Tuple[np.ndarray, np.ndarray]:
    """1-D waves of any length -> (N, length) array and (N,) valid lengths (crop keeps the start)."""
    out = np.zeros((len(waves), length), dtype)
    lengths = np.zeros((len(waves),), np.int32)
    for i, w in enumerate(waves):
        w = np.asarray(w)[:length]
        out[i, : w.size] = w
        lengths[i] = w.size
    return out, lengths


def length_mask(lengths: np.ndarray, length: int) -> np.ndarray:
    """(N,) lengths -> (N, length) bool, True at real samples."""
    return np.arange(length)[None, :] < np.asarray(lengths)[:, None]


def corrupt_images(images: np.ndarray, rng: np.random.Generator, occlusion: float, noise_std: float) -> np.ndarray:
    """Fixed per-example corruption of uint8 images (N, H, W, C) -> uint8.

    occlusion: side of a square of zeros, as a fraction of the image side, at a
      uniformly random position (0 disables).
    noise_std: std of added Gaussian pixel noise in [0, 1] units (0 disables).
    """
    n, h, w = images.shape[:3]
    x = images.astype(np.float32) / 255.0
    side_h, side_w = int(round(occlusion * h)), int(round(occlusion * w))
    top = rng.integers(0, h - side_h + 1, size=n)
    left = rng.integers(0, w - side_w + 1, size=n)
    if side_h > 0 and side_w > 0:
        rows = np.arange(h)[None, :, None]
        cols = np.arange(w)[None, None, :]
        box = ((rows >= top[:, None, None]) & (rows < top[:, None, None] + side_h)) & (
            (cols >= left[:, None, None]) & (cols < left[:, None, None] + side_w)
        )
        x = np.where(box[..., None], 0.0, x)
    if noise_std > 0:
        x = x + noise_std * rng.standard_normal(x.shape, dtype=np.float32)
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


def add_noise_at_snr(waves: np.ndarray, lengths: np.ndarray, rng: np.random.Generator, snr_db: Optional[float]) -> np.ndarray:
    """Adds white noise to the valid part of each wave (N, L) at ``snr_db`` (None disables)."""
    if snr_db is None:
        return waves
    mask = length_mask(lengths, waves.shape[1])
    x = waves.astype(np.float32)
    power = (np.where(mask, x, 0) ** 2).sum(1) / np.maximum(lengths, 1)
    scale = np.sqrt(power / (10.0 ** (snr_db / 10.0)))
    valid = np.minimum(np.asarray(lengths), waves.shape[1])
    # Noise is drawn for the valid samples only (float32: half the cost of float64 draws).
    out = np.zeros(waves.shape, np.float32)
    for i, noise in enumerate(normal_rows(rng, valid, np.float32)):
        out[i, : noise.size] = x[i, : noise.size] + scale[i : i + 1] * noise
    return out


def augment_images(x: np.ndarray, rng: np.random.Generator, pad: int, flip: bool, fill=0) -> np.ndarray:
    """Random crop after padding by ``pad`` pixels of ``fill`` (a value or one per channel) and random
    horizontal flip. x: (B, H, W, C), any dtype."""
    b, h, w = x.shape[:3]
    dy = rng.integers(0, 2 * pad + 1, size=b)
    dx = rng.integers(0, 2 * pad + 1, size=b)
    flips = rng.random(b) < 0.5
    if pad > 0:
        padded = np.empty((b, h + 2 * pad, w + 2 * pad) + x.shape[3:], x.dtype)
        padded[...] = np.asarray(fill, x.dtype)
        padded[:, pad : pad + h, pad : pad + w] = x
        rows = dy[:, None] + np.arange(h)[None, :]
        cols = dx[:, None] + np.arange(w)[None, :]
        x = padded[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]
    if flip:
        x = np.where(flips[:, None, None, None], x[:, :, ::-1], x)
    return x


def augment_audio(
    x: np.ndarray, lengths: np.ndarray, rng: np.random.Generator, gain_db: float, shift: int, noise_std: float
) -> Tuple[np.ndarray, np.ndarray]:
    """Random gain in [-gain_db, gain_db] dB, a delay of up to ``shift`` samples (the end is
    cut at L), additive uniform noise of std ``noise_std`` on the valid part. x: (B, L) -> (x, lengths)."""
    b, length = x.shape
    gains = 10.0 ** (rng.uniform(-gain_db, gain_db, size=b) / 20.0)
    shifts = rng.integers(0, shift + 1, size=b)
    x = x * gains[:, None].astype(np.float32)
    if shift > 0:
        out = np.zeros_like(x)
        for i, s in enumerate(shifts):  # row slices: far cheaper than a (B, L) gather
            out[i, s:] = x[i, : length - s]
        x = out
        lengths = np.minimum(lengths + shifts, length)
    if noise_std > 0:
        # Uniform noise with the same variance: generating it is several times cheaper
        # than Gaussian noise and it is only an augmentation.
        u = rng.random(x.shape, dtype=np.float32)
        x = np.where(length_mask(lengths, length), x + (noise_std * np.sqrt(12.0)) * (u - 0.5), 0.0)
    return x.astype(np.float32, copy=False), lengths.astype(np.int32)


def modality_dropout(
    present: np.ndarray, probs: Sequence[float], rng: np.random.Generator
) -> np.ndarray:
    """present (B, M) bool, probs (M,) -> (B, M) bool with each modality dropped with its probability,
    never dropping every present modality of an example (one of them, drawn uniformly, is kept)."""
    b, m = present.shape
    drop = rng.random((b, m)) < np.asarray(probs, np.float64)[None, :]
    keep_pick = rng.random((b, m))
    out = present & ~drop
    empty = ~out.any(1) & present.any(1)
    # Among present modalities pick the one with the largest random key.
    choice = np.argmax(np.where(present, keep_pick, -1.0), axis=1)
    out[empty, choice[empty]] = True
    return out


def class_weight_table(labels: np.ndarray, num_classes: int, spec) -> np.ndarray:
    """(C,) weights: "balanced" -> N / (C * count_c) (classes absent from the split get 0); or explicit."""
    if isinstance(spec, str):
        if spec != "balanced":
            raise ValueError(f"class_weights: expected 'balanced' or a list of {num_classes} numbers, got {spec!r}")
        counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
        w = np.where(counts > 0, labels.size / (num_classes * np.maximum(counts, 1)), 0.0)
        return w.astype(np.float32)
    w = np.asarray(list(spec), np.float32)
    if w.shape != (num_classes,):
        raise ValueError(f"class_weights: expected {num_classes} weights, got {w.shape[0]}")
    return w
