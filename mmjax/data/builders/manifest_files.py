"""Reading the files a manifest points at (no tensorflow): images, WAV audio, ``.npy`` vectors.

Each reader raises :class:`mmjax.data.errors.DataConfigError` with a one-line
message that starts with ``where`` (the manifest, row and column), so a bad
file is named exactly. Audio is resampled with :func:`resample`, a windowed-sinc
interpolator written in numpy (scipy is not a dependency of building).
"""
from __future__ import annotations

import wave
from typing import Optional, Tuple

import numpy as np

from mmjax.data.errors import DataConfigError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
AUDIO_EXTENSIONS = (".wav",)
VECTOR_EXTENSIONS = (".npy",)
EXTENSIONS = {"image": IMAGE_EXTENSIONS, "audio": AUDIO_EXTENSIONS, "vector": VECTOR_EXTENSIONS}
# PIL modes read as one channel; any other mode is read as RGB (an alpha channel is dropped).
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def open_image(path: str, where: str):
    """The decoded PIL image at ``path`` (every pixel read, so a truncated file fails here)."""
    from PIL import Image

    try:
        img = Image.open(path)
        img.load()
    except Exception as e:  # PIL raises several types for truncated or foreign bytes
        raise DataConfigError(f"{where}: unreadable image {path} ({type(e).__name__}: {' '.join(str(e).split())})") from None
    return img


def image_array(path: str, where: str, size: Tuple[int, int], channels: int) -> np.ndarray:
    """The image at ``path`` as uint8 (H, W, C) = (*size, channels); resized (bilinear) when its size differs."""
    from PIL import Image

    img = open_image(path, where).convert("L" if channels == 1 else "RGB")
    h, w = size
    if img.size != (w, h):
        img = img.resize((w, h), Image.BILINEAR)
    x = np.asarray(img, np.uint8)
    return x[..., None] if x.ndim == 2 else x


def wav_header(path: str, where: str) -> Tuple[int, int]:
    """(sample rate in Hz, number of frames) of a PCM WAV file."""
    try:
        with wave.open(path, "rb") as w:
            return w.getframerate(), w.getnframes()
    except (wave.Error, EOFError) as e:
        raise DataConfigError(f"{where}: unreadable WAV {path} ({e}; only PCM integer WAV files are read)") from None


def read_wav(path: str, where: str) -> Tuple[np.ndarray, int]:
    """A PCM WAV file -> (int16 (N,) mono samples, sample rate). Several channels are averaged;
    8-, 24- and 32-bit samples are scaled to 16 bits."""
    try:
        with wave.open(path, "rb") as w:
            rate, channels, width = w.getframerate(), w.getnchannels(), w.getsampwidth()
            raw = w.readframes(w.getnframes())
    except (wave.Error, EOFError) as e:
        raise DataConfigError(f"{where}: unreadable WAV {path} ({e}; only PCM integer WAV files are read)") from None
    if width == 1:
        x = (np.frombuffer(raw, np.uint8).astype(np.int32) - 128) * 256
    elif width == 2:
        x = np.frombuffer(raw, "<i2").astype(np.int32)
    elif width == 3:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        x = ((b[:, 0] << 8) | (b[:, 1] << 16) | (b[:, 2] << 24)) >> 16  # sign-extended, top 16 bits
    elif width == 4:
        x = np.frombuffer(raw, "<i4").astype(np.int32) >> 16
    else:
        raise DataConfigError(f"{where}: unreadable WAV {path} ({8 * width}-bit samples)")
    x = x[: len(x) // channels * channels].reshape(-1, channels)
    mono = x[:, 0] if channels == 1 else np.round(x.mean(axis=1))
    return np.clip(mono, -32768, 32767).astype(np.int16), rate


def read_vector(path: str, where: str) -> np.ndarray:
    """A ``.npy`` file holding a 1-D numeric array -> float32 (D,)."""
    try:
        x = np.load(path, allow_pickle=False)
    except Exception as e:  # numpy raises ValueError / OSError / UnpicklingError
        raise DataConfigError(f"{where}: unreadable .npy {path} ({type(e).__name__}: {' '.join(str(e).split())})") from None
    if x.ndim != 1 or not np.issubdtype(x.dtype, np.number):
        raise DataConfigError(f"{where}: {path} holds a {x.dtype} array of shape {x.shape}; a 1-D numeric vector is needed")
    return x.astype(np.float32)


def resample(x: np.ndarray, rate_in: int, rate_out: int, zero_crossings: int = 16,
             chunk: int = 8192) -> np.ndarray:
    """Band-limited resampling of (N,) samples from ``rate_in`` to ``rate_out`` Hz -> float64 (M,),
    M = round(N * rate_out / rate_in).

    Output sample j sits at input position t = j * rate_in / rate_out and is
    ``sum_k x[k] h(t - k)`` with h a Hann-windowed sinc low-pass at the lower of
    the two Nyquist frequencies, ``zero_crossings`` zero crossings each side
    (samples outside the clip count as 0). Work is done ``chunk`` outputs at a time.
    """
    x = np.asarray(x, np.float64).reshape(-1)
    if rate_in == rate_out:
        return x.copy()
    n_out = int(round(len(x) * rate_out / rate_in))
    cutoff = min(1.0, rate_out / rate_in)  # in units of the input Nyquist frequency
    half = int(np.ceil(zero_crossings / cutoff))  # filter half-width in input samples
    padded = np.concatenate([np.zeros(half), x, np.zeros(half + 1)])
    offsets = np.arange(-half + 1, half + 1)
    out = np.empty(n_out)
    for start in range(0, n_out, chunk):
        t = np.arange(start, min(n_out, start + chunk)) * (rate_in / rate_out)
        k = np.floor(t).astype(np.int64)[:, None] + offsets[None, :]
        d = t[:, None] - k
        window = np.where(np.abs(d) < half, 0.5 * (1.0 + np.cos(np.pi * d / half)), 0.0)
        taps = cutoff * np.sinc(cutoff * d) * window
        out[start:start + len(t)] = (padded[np.clip(k, -half, len(x) + half) + half] * taps).sum(axis=1)
    return out


def to_int16(x: np.ndarray) -> np.ndarray:
    """Float samples in int16 units -> int16 (rounded, clipped)."""
    return np.clip(np.round(x), -32768, 32767).astype(np.int16)


def kind_of(path: str) -> Optional[str]:
    """"image" / "audio" / "vector" by the file extension, or None for any other extension."""
    low = path.lower()
    for kind, exts in EXTENSIONS.items():
        if low.endswith(exts):
            return kind
    return None
