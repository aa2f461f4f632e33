"""Synthetic speech with espeak-ng (through the ``espeakng-loader`` wheel).

The wheel ships ``libespeak-ng`` and its voice data, so speech can be made
offline. We drive the C API with ctypes in synchronous mode: every call to
``espeak_Synth`` fills our callback with 16-bit samples at 22,050 Hz.

The speech is synthetic (formant synthesis): "speakers" are combinations of
an accent (language voice) and a variant (timbre), spoken at several rates and
pitches. It is not a substitute for human recordings.
"""
from __future__ import annotations

import ctypes
import threading
from typing import List, Optional

import numpy as np

from mmjax import errors

ESPEAK_RATE = 22050

# espeak_PARAMETER values from speak_lib.h.
_RATE, _PITCH = 1, 3
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1


class SpeechUnavailableError(errors.DependencyError, RuntimeError):
    """espeak-ng could not be loaded (the ``espeakng-loader`` wheel is missing)."""


class Synthesizer:
    """A process-wide espeak-ng handle: ``synth(text, voice, rate, pitch) -> int16 (N,)``.

    espeak-ng keeps global state, so all calls go through one lock.
    """

    _instance: Optional["Synthesizer"] = None
    _lock = threading.RLock()

    def __init__(self):
        try:
            import espeakng_loader
        except ImportError as e:
            raise SpeechUnavailableError(
                "speech synthesis needs the espeakng-loader wheel: pip install espeakng-loader"
            ) from e
        self._lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self._lib.espeak_Initialize.restype = ctypes.c_int
        rate = self._lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), 0
        )
        if rate != ESPEAK_RATE:
            raise SpeechUnavailableError(f"espeak-ng initialisation failed (returned {rate})")
        self._chunks: List[np.ndarray] = []
        callback_type = ctypes.CFUNCTYPE(
            ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
        )

        def on_audio(wav, n, events):
            if n > 0:
                self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            return 0

        # Keep a reference: ctypes would otherwise free the trampoline.
        self._callback = callback_type(on_audio)
        self._lib.espeak_SetSynthCallback(self._callback)
        # The very first utterance after initialisation comes out slightly different
        # from later ones; speak one throwaway word so every clip sees the same state.
        self._seed_rng = getattr(self._lib, "espeak_ng_SetRandSeed", None)
        self.synth("zero", "en")

    @classmethod
    def get(cls) -> "Synthesizer":
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def synth(self, text: str, voice: str, rate: int = 175, pitch: int = 50) -> np.ndarray:
        """Speaks ``text`` -> int16 waveform (N,) at 22,050 Hz.

        Args:
          voice: espeak voice name, "<language>[+<variant>]", e.g. "en-us+f3".
          rate: words per minute (80..450).
          pitch: 0..99, 50 is the voice's normal pitch.
        """
        with self._lock:
            if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise ValueError(f"espeak-ng has no voice {voice!r}")
            self._lib.espeak_SetParameter(_RATE, int(rate), 0)
            self._lib.espeak_SetParameter(_PITCH, int(pitch), 0)
            self._chunks = []
            # espeak-ng's noise sources use its own PRNG; reseed so a clip does not
            # depend on what was spoken before it.
            if self._seed_rng is not None:
                self._seed_rng(0)
            data = text.encode() + b"\0"
            err = self._lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, 0, None, None)
            if err != 0:
                raise RuntimeError(f"espeak_Synth failed with code {err} for voice {voice!r}")
            self._lib.espeak_Synchronize()
            chunks, self._chunks = self._chunks, []
        return np.concatenate(chunks) if chunks else np.zeros((0,), np.int16)


def resample(wave: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Band-limited polyphase resampling of a 1-D float waveform."""
    from math import gcd

    from scipy.signal import resample_poly

    g = gcd(rate_in, rate_out)
    return resample_poly(wave.astype(np.float64), rate_out // g, rate_in // g)


def trim_silence(wave: np.ndarray, threshold: float = 0.02) -> np.ndarray:
    """Drops leading/trailing samples below ``threshold`` x peak (espeak pads with silence)."""
    if wave.size == 0:
        return wave
    loud = np.nonzero(np.abs(wave) > threshold * np.abs(wave).max())[0]
    if loud.size == 0:
        return wave[:0]
    return wave[loud[0] : loud[-1] + 1]
