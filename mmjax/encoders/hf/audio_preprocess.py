"""Waveforms -> the audio towers' inputs, as the ``transformers`` feature extractors compute them (JAX, float32).

Both read the directory's ``preprocessor_config.json`` and return features
time first, (B, frames, n_mels), what :mod:`whisper` / :mod:`audio_spectrogram`
consume. The array math (:meth:`features`) is jit-able; ``__call__`` first pads
or truncates each waveform on the host, as the extractors do.

* :class:`WhisperFeatures` (``WhisperFeatureExtractor``): each waveform zero
  padded / truncated to ``chunk_length`` seconds; |STFT|^2 with a periodic Hann
  window of ``n_fft``, reflect centre padding and ``hop_length``; Slaney mel
  filters (0 to 8 kHz, Slaney norm); the last frame dropped; log10 clamped at
  1e-10, floored at (the example's max - 8); (x + 4) / 4.
* :class:`ASTFeatures` (``ASTFeatureExtractor``): Kaldi-style filterbanks: 25 ms
  frames every 10 ms without padding, each frame's mean removed, pre-emphasis
  0.97, a symmetric Hann window, an FFT of the next power of two, power; mel
  filters triangular on Kaldi's mel scale (20 Hz to Nyquist, no norm); natural
  log floored at float32 epsilon; zero padded / truncated to ``max_length``
  frames; (x - mean) / (2 std). This is the extractor's numpy path (used when
  torchaudio is absent), which mirrors ``torchaudio.compliance.kaldi.fbank``.
"""
from __future__ import annotations

import functools
from typing import Any, Mapping, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.encoders import audio_frontend
from mmjax.encoders.hf.weights import HFCheckpointError, read_json

Array = jax.Array
Waves = Union[np.ndarray, Sequence[np.ndarray]]
KALDI_FLOOR = float(np.finfo(np.float32).eps)  # the extractor's mel_floor (1.1920929e-07)


def _waves(waveforms: Waves, where: str) -> list:
    """A (N,) waveform, a (B, N) batch or a list of (N_i,) -> a list of float32 (N_i,) arrays."""
    if isinstance(waveforms, np.ndarray) or hasattr(waveforms, "shape"):
        arr = np.asarray(waveforms, np.float32)
        if arr.ndim not in (1, 2):
            raise HFCheckpointError(f"{where}: waveforms must be (N,) or (B, N) mono, got {arr.shape}")
        return [arr] if arr.ndim == 1 else list(arr)
    waves = [np.asarray(w, np.float32) for w in waveforms]
    if not waves or any(w.ndim != 1 for w in waves):
        raise HFCheckpointError(f"{where}: expected a non-empty list of (N,) mono waveforms")
    return waves


def _check_rate(expected: int, got: Optional[int], where: str) -> None:
    if got is not None and int(got) != int(expected):
        raise HFCheckpointError(f"{where}: the checkpoint expects {expected} Hz audio, got {got} Hz (resample first)")


def _config(model_dir: str, kind: str) -> Mapping[str, Any]:
    cfg = read_json(model_dir, "preprocessor_config.json")
    if not cfg:
        raise HFCheckpointError(f"{model_dir}: no preprocessor_config.json (the {kind} feature extractor's settings)")
    return cfg.get("feature_extractor", cfg)


class WhisperFeatures:
    """waveform(s) at ``sampling_rate`` -> input_features (B, chunk_length * sampling_rate / hop_length, n_mels)."""

    def __init__(self, config: Mapping[str, Any]):
        c = dict(config)
        if float(c.get("dither", 0.0)) != 0.0:
            raise HFCheckpointError("whisper preprocessing: dither != 0 (random noise) is not supported")
        self.n_mels, self.sampling_rate = int(c.get("feature_size", 80)), int(c.get("sampling_rate", 16000))
        self.hop_length, self.n_fft = int(c.get("hop_length", 160)), int(c.get("n_fft", 400))
        self.n_samples = int(c.get("chunk_length", 30)) * self.sampling_rate
        self.padding_value = float(c.get("padding_value", 0.0))
        self.filters = audio_frontend.mel_filterbank(self.sampling_rate, self.n_fft, self.n_mels, 0.0, 8000.0,
                                                     htk=False, norm="slaney")

    @classmethod
    def from_dir(cls, model_dir: str) -> "WhisperFeatures":
        return cls(_config(model_dir, "Whisper"))

    @functools.partial(jax.jit, static_argnums=0)
    def features(self, wave: Array) -> Array:
        """(B, n_samples) padded waveforms -> (B, n_samples / hop_length, n_mels) log-mel."""
        spec = audio_frontend.stft_power(wave, n_fft=self.n_fft, hop_length=self.hop_length, center=True,
                                         pad_mode="reflect")[:, :-1]
        mel = jnp.einsum("btk,mk->btm", spec, jnp.asarray(self.filters), precision=jax.lax.Precision.HIGHEST)
        log = jnp.log10(jnp.maximum(mel, 1e-10))
        log = jnp.maximum(log, log.max(axis=(1, 2), keepdims=True) - 8.0)
        return (log + 4.0) / 4.0

    def __call__(self, waveforms: Waves, sampling_rate: Optional[int] = None) -> Array:
        _check_rate(self.sampling_rate, sampling_rate, "whisper preprocessing")
        waves = _waves(waveforms, "whisper preprocessing")
        batch = np.full((len(waves), self.n_samples), self.padding_value, np.float32)
        for i, w in enumerate(waves):
            batch[i, :min(len(w), self.n_samples)] = w[:self.n_samples]
        return self.features(jnp.asarray(batch))


def kaldi_mel_filters(n_bins: int, n_mels: int, fmin: float, fmax: float, sr: int) -> np.ndarray:
    """(n_bins, n_mels) triangles equally spaced on Kaldi's mel scale 1127 ln(1 + f / 700), computed there."""
    mel = lambda f: 1127.0 * np.log(1.0 + np.asarray(f, np.float64) / 700.0)  # noqa: E731
    centres = np.linspace(mel(fmin), mel(fmax), n_mels + 2)
    bins = mel(sr / ((n_bins - 1) * 2) * np.arange(n_bins))
    slopes = centres[None, :] - bins[:, None]
    widths = np.diff(centres)
    down, up = -slopes[:, :-2] / widths[:-1], slopes[:, 2:] / widths[1:]
    return np.maximum(0.0, np.minimum(down, up)).astype(np.float32)


class ASTFeatures:
    """waveform(s) at ``sampling_rate`` -> input_values (B, max_length, num_mel_bins)."""

    PREEMPHASIS = 0.97

    def __init__(self, config: Mapping[str, Any]):
        c = dict(config)
        self.sampling_rate, self.n_mels = int(c.get("sampling_rate", 16000)), int(c.get("num_mel_bins", 128))
        self.max_length, self.do_normalize = int(c.get("max_length", 1024)), bool(c.get("do_normalize", True))
        self.mean, self.std = float(c.get("mean", -4.2677393)), float(c.get("std", 4.5689974))
        # 25 ms frames every 10 ms (400 / 160 samples at 16 kHz), FFT rounded up to a power of two.
        self.frame, self.hop = round(0.025 * self.sampling_rate), round(0.010 * self.sampling_rate)
        self.n_fft = 1 << (self.frame - 1).bit_length()
        self.filters = kaldi_mel_filters(self.n_fft // 2 + 1, self.n_mels, 20.0, self.sampling_rate // 2,
                                         self.sampling_rate)
        self.window = np.hanning(self.frame).astype(np.float32)  # symmetric (Kaldi's "hanning")

    @classmethod
    def from_dir(cls, model_dir: str) -> "ASTFeatures":
        return cls(_config(model_dir, "AST"))

    @functools.partial(jax.jit, static_argnums=0)
    def features(self, wave: Array) -> Array:
        """(N,) waveform, N >= one frame -> (max_length, n_mels) normalised log filterbank energies."""
        frames = 1 + (wave.shape[0] - self.frame) // self.hop
        idx = np.arange(frames)[:, None] * self.hop + np.arange(self.frame)[None, :]
        x = wave.astype(jnp.float32)[idx]
        x = x - x.mean(axis=-1, keepdims=True)
        x = jnp.concatenate([x[:, :1] * (1 - self.PREEMPHASIS), x[:, 1:] - self.PREEMPHASIS * x[:, :-1]], axis=-1)
        z = jnp.fft.rfft(x * jnp.asarray(self.window), n=self.n_fft, axis=-1)
        power = jnp.real(z) ** 2 + jnp.imag(z) ** 2
        mel = jnp.einsum("tk,km->tm", power, jnp.asarray(self.filters), precision=jax.lax.Precision.HIGHEST)
        fbank = jnp.log(jnp.maximum(mel, KALDI_FLOOR))[:self.max_length]
        fbank = jnp.pad(fbank, ((0, self.max_length - fbank.shape[0]), (0, 0)))  # zero frames, then normalised
        return (fbank - self.mean) / (2 * self.std) if self.do_normalize else fbank

    def __call__(self, waveforms: Waves, sampling_rate: Optional[int] = None) -> Array:
        _check_rate(self.sampling_rate, sampling_rate, "ast preprocessing")
        waves = _waves(waveforms, "ast preprocessing")
        short = [len(w) for w in waves if len(w) < self.frame]
        if short:
            raise HFCheckpointError(f"ast preprocessing: waveforms need at least one {self.frame}-sample frame, "
                                    f"got {short[0]} samples")
        return jnp.stack([self.features(jnp.asarray(w)) for w in waves])
