"""The ``features3`` extraction: examples -> three pretrained feature vectors (numpy, jax).

The ``features3`` builder (:mod:`mmjax.data.builders.features3`) runs this once
per builder config, over the Tux Paint stamps (read by
:mod:`mmjax.data.builders.stamps_gen`). Each example becomes

* ``text``  (384,): all-MiniLM-L6-v2 sentence embedding of the description
  (mean-pooled, L2-normalised; :func:`mmjax.encoders.pretrained.load_minilm`);
* ``image`` (1280,): EfficientNet-Lite0 ImageNet global-average-pooled
  features of the clip art rendered at ``image_size`` x ``image_size`` on white
  (:func:`mmjax.encoders.pretrained.load_efficientnet_lite0`);
* ``audio`` (2 * (n_mels + n_mfcc),) = (120,) by default: mean and standard
  deviation over the real frames of the log-mel spectrogram and of the MFCCs
  of the spoken description at 8 kHz (:mod:`mmjax.encoders.audio_frontend`).
  An example without a recording gets zeros and ``audio__present`` False.

Settings (a mapping; :data:`DEFAULTS` for what is not given): ``language``,
``image_size``, ``text_max_len`` (MiniLM tokens), ``audio_seconds`` (speech
crop), ``sample_rate``, ``n_fft``, ``hop_length``, ``n_mels``, ``n_mfcc``,
``extract_batch_size``.

Language: the stamps descriptions default to **French** (the language with
the most recordings), while all-MiniLM-L6-v2 is an English model: French
sentences split into many sub-word pieces and embed less meaningfully, so the
text vectors carry less category information than English ones would. The
``en`` config has English descriptions but far fewer recordings.
"""
from __future__ import annotations

import hashlib
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from mmjax.data.errors import DataConfigError

MODALITIES = ("audio", "image", "text")
DEFAULTS = dict(language="fr", image_size=224, text_max_len=64, audio_seconds=4.0, sample_rate=8000, n_fft=256,
                hop_length=80, n_mels=40, n_mfcc=20, extract_batch_size=32)


def setting(cfg: Mapping[str, Any], key: str) -> Any:
    value = cfg.get(key)
    return DEFAULTS[key] if value is None else value


def audio_dim(cfg: Mapping[str, Any]) -> int:
    return 2 * (int(setting(cfg, "n_mels")) + int(setting(cfg, "n_mfcc")))


class Extractor:
    """The three frozen feature extractors, jitted once.

    ``image(uint8 (B, H, W, 3)) -> (B, 1280)``, ``text(B strings) -> (B, 384)``,
    ``audio(float32 (B, N), lengths (B,)) -> (B, 2 * (n_mels + n_mfcc))``.
    """

    def __init__(self, cfg: Mapping[str, Any]):
        import jax
        import jax.numpy as jnp

        from mmjax.encoders import audio_frontend as af
        from mmjax.encoders.pretrained import load_efficientnet_lite0, load_minilm

        self.cfg = cfg
        text_enc, text_vars, self._tokenizer = load_minilm(max_len=int(setting(cfg, "text_max_len")))
        image_enc, image_vars, self._image_prep = load_efficientnet_lite0(include_top=False)
        self._text = jax.jit(lambda ids, mask: text_enc.apply(text_vars, ids, mask).pooled)
        self._image = jax.jit(lambda x: image_enc.apply(image_vars, x, train=False).pooled)
        mel = {k: int(setting(cfg, k)) for k in ("n_fft", "hop_length", "n_mels")}
        mel["sr"] = int(setting(cfg, "sample_rate"))
        n_mfcc = int(setting(cfg, "n_mfcc"))

        def audio(wave, lengths):
            mask = jnp.arange(wave.shape[1])[None, :] < lengths[:, None]
            log_mel = af.log_melspectrogram(wave, mask=mask, **mel)
            mfcc = af.mfcc(wave, n_mfcc=n_mfcc, mask=mask, **mel)
            frames = af.frame_mask(mask, mel["n_fft"], mel["hop_length"])[..., None]
            count = jnp.maximum(frames.sum(1), 1)

            def stats(x):
                mean = jnp.where(frames, x, 0).sum(1) / count
                var = jnp.where(frames, (x - mean[:, None]) ** 2, 0).sum(1) / count
                return mean, jnp.sqrt(var)

            (mm, ms), (cm, cs) = stats(log_mel), stats(mfcc)
            out = jnp.concatenate([mm, ms, cm, cs], axis=-1)
            return jnp.where((lengths > 0)[:, None], out, 0.0)

        self._audio = jax.jit(audio)

    def image(self, images: Sequence[np.ndarray]) -> np.ndarray:
        # Per image: sizes may differ, the eval crop is taken from each one's own shorter side.
        size = int(setting(self.cfg, "image_size"))
        x = np.concatenate([self._image_prep(np.asarray(im), size) for im in images])
        return np.asarray(self._image(x))

    def text(self, texts: Sequence[str]) -> np.ndarray:
        ids, mask = self._tokenizer(list(texts))
        return np.asarray(self._text(ids, mask))

    def audio(self, waves: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        return np.asarray(self._audio(np.asarray(waves, np.float32), np.asarray(lengths, np.int32)))


def _pad_waves(waves: Sequence[np.ndarray], length: int) -> tuple:
    out = np.zeros((len(waves), length), np.float32)
    lengths = np.zeros((len(waves),), np.int32)
    for i, w in enumerate(waves):
        w = np.asarray(w)
        w = w.astype(np.float32) / 32768.0 if np.issubdtype(w.dtype, np.integer) else w.astype(np.float32)
        w = w[:length]
        out[i, : w.size] = w
        lengths[i] = w.size
    return out, lengths


def extract(examples: Sequence[Mapping[str, Any]], cfg: Mapping[str, Any], *,
            extractor: Optional[Extractor] = None, progress: bool = True, desc: str = "features3") -> Dict[str, np.ndarray]:
    """Examples -> feature columns.

    Args:
      examples: dicts with ``image`` uint8 (H, W, 3) (any size), ``text`` str, ``speech``
        1-D waveform at ``sample_rate`` (int16 or float in [-1, 1]; empty
        = no recording), ``label`` int and ``key`` str (a stable id).
      cfg: the settings (see the module docstring).
      extractor: reuse loaded models (built from ``cfg`` otherwise).

    Returns:
      ``{"image": (N, 1280), "text": (N, 384), "audio": (N, A)}`` float32,
      ``audio__present`` (N,) bool, ``label`` (N,) int32, ``key`` (N,) str,
      ``index`` (N,) int64.
    """
    if not examples:
        raise DataConfigError("features3: no examples to extract")
    ex = extractor or Extractor(cfg)
    bs = int(setting(cfg, "extract_batch_size"))
    length = int(round(float(setting(cfg, "audio_seconds")) * int(setting(cfg, "sample_rate"))))
    parts: Dict[str, List[np.ndarray]] = {m: [] for m in MODALITIES}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(examples), desc=desc, unit="ex")
    for lo in range(0, len(examples), bs):
        chunk = examples[lo: lo + bs]
        # Pad every chunk to the full batch size so each extractor compiles once.
        padded = list(chunk) + [chunk[0]] * (bs - len(chunk))
        images = [np.asarray(e["image"], np.uint8) for e in padded]
        waves, lengths = _pad_waves([e["speech"] for e in padded], length)
        parts["image"].append(ex.image(images)[: len(chunk)])
        parts["text"].append(ex.text([e["text"] for e in padded])[: len(chunk)])
        parts["audio"].append(ex.audio(waves, lengths)[: len(chunk)])
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    cols = {m: np.concatenate(v).astype(np.float32) for m, v in parts.items()}
    cols["audio__present"] = np.array([np.asarray(e["speech"]).size > 0 for e in examples], bool)
    cols["label"] = np.array([int(e["label"]) for e in examples], np.int32)
    cols["key"] = np.array([str(e["key"]) for e in examples])
    cols["index"] = np.arange(len(examples), dtype=np.int64)
    return cols


def content_hash(cols: Mapping[str, np.ndarray]) -> str:
    """sha256 over the columns (sorted by name; names, dtypes, shapes and bytes)."""
    h = hashlib.sha256()
    for k in sorted(cols):
        a = np.ascontiguousarray(cols[k])
        h.update(f"{k}|{a.dtype.str}|{a.shape}".encode())
        h.update(a.tobytes() if a.dtype.kind != "U" else "\x00".join(a.tolist()).encode())
    return h.hexdigest()


def standardizer(x: np.ndarray) -> tuple:
    """Per-dimension mean and std of (N, D) ``x`` (std floored so constant dimensions stay finite)."""
    if len(x) == 0:
        return np.zeros(x.shape[1:], np.float32), np.ones(x.shape[1:], np.float32)
    return x.mean(0).astype(np.float32), np.maximum(x.std(0), 1e-6).astype(np.float32)


def standardize_record(cols: Mapping[str, np.ndarray]) -> Dict[str, Dict[str, List[float]]]:
    """feature -> {"mean": [D], "std": [D]} of the train columns, over the examples that have
    the modality (audio: ``audio__present``), for the dataset metadata's ``standardize``.
    float32 values written as JSON floats read back exactly."""
    out = {}
    for m in MODALITIES:
        present = cols["audio__present"] if m == "audio" else np.ones(len(cols[m]), bool)
        mean, std = standardizer(cols[m][present])
        out[m] = {"mean": mean.tolist(), "std": std.tolist()}
    return out


def stamps_examples(cfg: Mapping[str, Any], split: str) -> List[Dict[str, Any]]:
    """The stamps of ``split`` as :func:`extract` examples (the stamps split rule, no tensorflow);
    the stamps root is $MMJAX_STAMPS_ROOT or /usr/share/tuxpaint/stamps."""
    from mmjax.data.builders import stamps_gen as gen

    if int(setting(cfg, "sample_rate")) != gen.SAMPLE_RATE:
        raise DataConfigError(f"features3: sample_rate must be {gen.SAMPLE_RATE} for stamps recordings")
    stamps = gen.scan(os.environ.get("MMJAX_STAMPS_ROOT", gen.DEFAULT_ROOT), setting(cfg, "language"))
    size = int(setting(cfg, "image_size"))
    max_samples = int(round(float(setting(cfg, "audio_seconds")) * gen.SAMPLE_RATE))
    return [{"image": gen.load_image(s.image, size), "text": s.description,
             "speech": gen.load_audio(s.speech, max_samples),
             "label": gen.CATEGORIES.index(s.category), "key": s.stem}
            for s in stamps if s.split == split]
