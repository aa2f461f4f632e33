"""``features3``: stamps as three precomputed feature vectors, served without tensorflow.

Pipeline
--------
1. **Extraction** (once per data config, on first use or with
   :func:`ensure_features`): every Tux Paint stamp (read straight from the
   installed package by :mod:`mmjax.data.builders.stamps_gen`, which needs
   no tensorflow) becomes

   * ``text``  (384,): all-MiniLM-L6-v2 sentence embedding of the description
     (mean-pooled, L2-normalised; :func:`mmjax.encoders.pretrained.load_minilm`);
   * ``image`` (1280,): EfficientNet-Lite0 ImageNet global-average-pooled
     features of the clip art rendered at 224 x 224 on white
     (:func:`mmjax.encoders.pretrained.load_efficientnet_lite0`);
   * ``audio`` (2 * (n_mels + n_mfcc),) = (120,) by default: mean and standard
     deviation over the real frames of the log-mel spectrogram (40 bands) and
     of the MFCCs (20) of the spoken description at 8 kHz
     (:mod:`mmjax.encoders.audio_frontend`). A stamp without a recording gets
     zeros and ``audio__present`` False, which batches report as a missing
     modality (``modality_mask["audio"]`` False).

   The columns of a split are written to
   ``<features_dir>/<key>/<split>.npz`` (``features_dir`` defaults to
   ``<data_dir>/mmjax_features3``, ``data_dir`` to $MMJAX_DATA_DIR or
   ~/tensorflow_datasets; ``key`` hashes everything that changes the
   features), with a tqdm progress bar during extraction, and
   ``info.json`` beside them records class names, split sizes and the
   sha256 of each split's columns (:func:`content_hash`). Loading checks the
   hash, so a truncated or edited file is an error rather than silent drift.
2. **Serving** (:func:`make_iterator`): numpy only. Features are z-scored
   with the train split's per-dimension mean and std (over examples where the
   modality is present). The batch order is that of ``mmjax.data.pipeline``:
   train epoch ``e`` visits ``default_rng([seed, e]).permutation(N)``,
   global step ``s`` takes block ``s % steps_per_epoch`` of epoch
   ``s // steps_per_epoch`` (the last partial block is dropped), so
   ``start_step=k`` resumes exactly; process ``p`` of ``P`` takes rows
   ``[p*B/P, (p+1)*B/P)`` of every global batch. Eval is one ordered pass,
   the last batch padded with ``weight`` 0 rows.

Batches: ``{"inputs": {"audio": (B, 120), "image": (B, 1280), "text": (B, 384)}
float32, "modality_mask": {m: (B,) bool}, "label": (B,) int32,
"weight": (B,) float32}``. With ``class_weights="balanced"`` train weights are
``N / (C * count_c)`` of the train split; eval weights are never class
weighted (they only mark padding), so eval accuracy and macro-F1 are the usual
unweighted ones.

Language: the default stamps descriptions are **French** (``language="fr"``,
the language with the most recordings), while all-MiniLM-L6-v2 is an English
model (its WordPiece vocabulary and training pairs are English). French
sentences are split into many sub-word pieces and embedded less
meaningfully, so the text vectors carry less category information than they
would for English; ``--config.data.language=en`` gives English descriptions
(but far fewer recordings, so most examples then lack audio).
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence

import numpy as np

from experiments.errors import UserError

FEATURE_VERSION = 1
MODALITIES = ("audio", "image", "text")
SPLITS = ("train", "test")


class FeaturesError(UserError, ValueError):
    """Bad features3 config, missing source data, or a feature file that does not match its hash."""


def data_config(**overrides: Any):
    """The features3 data config (keys documented inline)."""
    import ml_collections

    cfg = ml_collections.ConfigDict(dict(
        name="features3",
        source="stamps",          # where the examples come from (only "stamps")
        language="fr",            # stamps description / recording language
        stamps_root=None,         # None -> $MMJAX_STAMPS_ROOT or /usr/share/tuxpaint/stamps
        data_dir=None,            # None -> $MMJAX_DATA_DIR or ~/tensorflow_datasets
        features_dir=None,        # None -> <data_dir>/mmjax_features3
        image_size=224,           # EfficientNet-Lite0 input side
        text_max_len=64,          # MiniLM tokens
        audio_seconds=4.0,        # speech crop
        sample_rate=8000,
        n_fft=256,
        hop_length=80,
        n_mels=40,
        n_mfcc=20,
        extract_batch_size=32,
        standardize=True,         # z-score with train-split statistics
        class_weights=None,       # None | "balanced" | list of C weights (train batches only)
        shuffle=True,
    ))
    cfg.update(overrides)
    return cfg


# ---------------------------------------------------------------- extraction


def _feature_key(cfg: Mapping[str, Any]) -> str:
    keys = ("source", "language", "image_size", "text_max_len", "audio_seconds", "sample_rate", "n_fft",
            "hop_length", "n_mels", "n_mfcc")
    blob = json.dumps({"version": FEATURE_VERSION, **{k: cfg.get(k) for k in keys}}, sort_keys=True)
    return f"{cfg.get('source', 'stamps')}-{cfg.get('language', 'fr')}-" + hashlib.sha256(blob.encode()).hexdigest()[:12]


def features_dir(cfg: Mapping[str, Any]) -> str:
    """Directory holding this config's ``<split>.npz`` and ``info.json``."""
    from mmjax.data.config import resolve_data_dir

    root = cfg.get("features_dir") or os.path.join(resolve_data_dir(cfg.get("data_dir")), "mmjax_features3")
    return os.path.join(os.path.expanduser(root), _feature_key(cfg))


def audio_dim(cfg: Mapping[str, Any]) -> int:
    return 2 * (int(cfg.get("n_mels", 40)) + int(cfg.get("n_mfcc", 20)))


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
        text_enc, text_vars, self._tokenizer = load_minilm(max_len=int(cfg.get("text_max_len", 64)))
        image_enc, image_vars, self._image_prep = load_efficientnet_lite0(include_top=False)
        self._text = jax.jit(lambda ids, mask: text_enc.apply(text_vars, ids, mask).pooled)
        self._image = jax.jit(lambda x: image_enc.apply(image_vars, x, train=False).pooled)
        mel = dict(sr=int(cfg.get("sample_rate", 8000)), n_fft=int(cfg.get("n_fft", 256)),
                   hop_length=int(cfg.get("hop_length", 80)), n_mels=int(cfg.get("n_mels", 40)))
        n_mfcc = int(cfg.get("n_mfcc", 20))

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
        size = int(self.cfg.get("image_size", 224))
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
        1-D waveform at ``cfg.sample_rate`` (int16 or float in [-1, 1]; empty
        = no recording), ``label`` int and ``key`` str (a stable id).
      cfg: a :func:`data_config`.
      extractor: reuse loaded models (built from ``cfg`` otherwise).

    Returns:
      ``{"image": (N, 1280), "text": (N, 384), "audio": (N, A)}`` float32,
      ``audio__present`` (N,) bool, ``label`` (N,) int32, ``key`` (N,) str,
      ``index`` (N,) int64.
    """
    if not examples:
        raise FeaturesError("features3: no examples to extract")
    ex = extractor or Extractor(cfg)
    bs = int(cfg.get("extract_batch_size", 32))
    length = int(round(float(cfg.get("audio_seconds", 4.0)) * int(cfg.get("sample_rate", 8000))))
    parts: Dict[str, List[np.ndarray]] = {m: [] for m in MODALITIES}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(examples), desc=desc, unit="ex")
    for lo in range(0, len(examples), bs):
        chunk = examples[lo: lo + bs]
        # Pad every chunk to the full batch size so each extractor compiles once.
        pad = bs - len(chunk)
        padded = list(chunk) + [chunk[0]] * pad
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


def save_columns(path: str, cols: Mapping[str, np.ndarray]) -> str:
    """Writes ``cols`` atomically to ``path`` (.npz); returns their content hash."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(tmp, **cols)
    os.replace(tmp, path)
    return content_hash(cols)


def load_columns(path: str, expected_hash: Optional[str] = None) -> Dict[str, np.ndarray]:
    """Reads a .npz written by :func:`save_columns`, checking its hash when given."""
    with np.load(path, allow_pickle=False) as z:
        cols = {k: z[k] for k in z.files}
    if expected_hash is not None and content_hash(cols) != expected_hash:
        raise FeaturesError(f"features3: {path} does not match its recorded sha256 {expected_hash[:12]}...; "
                            f"delete {os.path.dirname(path)} to re-extract")
    return cols


def stamps_examples(cfg: Mapping[str, Any], split: str) -> List[Dict[str, Any]]:
    """The stamps of ``split`` as :func:`extract` examples (the builder's split rule, no tensorflow)."""
    from mmjax.data.builders import stamps_gen as gen
    from mmjax.data.errors import DataConfigError

    root = cfg.get("stamps_root") or os.environ.get("MMJAX_STAMPS_ROOT", gen.DEFAULT_ROOT)
    try:
        stamps = gen.scan(root, cfg.get("language", "fr"))
    except DataConfigError as e:
        raise FeaturesError(f"features3: {e}") from None
    size = int(cfg.get("image_size", 224))
    max_samples = int(round(float(cfg.get("audio_seconds", 4.0)) * gen.SAMPLE_RATE))
    if int(cfg.get("sample_rate", 8000)) != gen.SAMPLE_RATE:
        raise FeaturesError(f"features3: data.sample_rate must be {gen.SAMPLE_RATE} for stamps recordings")
    out = []
    for s in stamps:
        if s.split != split:
            continue
        out.append({"image": gen.load_image(s.image, size), "text": s.description,
                    "speech": gen.load_audio(s.speech, max_samples),
                    "label": gen.CATEGORIES.index(s.category), "key": s.stem})
    return out


def _class_names(cfg: Mapping[str, Any]) -> List[str]:
    if cfg.get("source", "stamps") != "stamps":
        raise FeaturesError(f"features3: data.source must be 'stamps', got {cfg.get('source')!r}")
    from mmjax.data.builders import stamps_gen as gen

    return list(gen.CATEGORIES)


def ensure_features(cfg: Mapping[str, Any], *, progress: bool = True) -> Dict[str, Any]:
    """Extracts the missing splits (once) and returns the info record (see :func:`info`)."""
    names = _class_names(cfg)
    directory = features_dir(cfg)
    info_path = os.path.join(directory, "info.json")
    record = _read_info(info_path)
    missing = [s for s in SPLITS if s not in record.get("hashes", {})
               or not os.path.exists(os.path.join(directory, f"{s}.npz"))]
    if not missing:
        return record
    extractor = None
    record = {"name": "features3", "class_names": names, "num_classes": len(names), "version": FEATURE_VERSION,
              "config": {k: v for k, v in dict(cfg).items() if k not in ("data_dir", "features_dir", "stamps_root")},
              **{k: dict(record.get(k, {})) for k in ("hashes", "splits", "audio_present")}}
    for split in missing:
        examples = stamps_examples(cfg, split)
        if not examples:
            raise FeaturesError(f"features3: split {split!r} has no stamps")
        extractor = extractor or Extractor(cfg)
        cols = extract(examples, cfg, extractor=extractor, progress=progress, desc=f"features3 {split}")
        record["hashes"][split] = save_columns(os.path.join(directory, f"{split}.npz"), cols)
        record["splits"][split] = int(len(cols["label"]))
        record["audio_present"][split] = int(cols["audio__present"].sum())
    tmp = info_path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1, default=str)
    os.replace(tmp, info_path)
    return record


def _read_info(path: str) -> Dict[str, Any]:
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def info(data_cfg: Mapping[str, Any]) -> Dict[str, Any]:
    """{"num_classes", "class_names", "modalities", "dims", "splits", "hashes"}; extracts on first use."""
    record = ensure_features(data_cfg)
    return {"num_classes": len(record["class_names"]), "class_names": record["class_names"],
            "modalities": list(MODALITIES), "dims": {"audio": audio_dim(data_cfg), "image": 1280, "text": 384},
            "splits": record["splits"], "hashes": record["hashes"]}


# ---------------------------------------------------------------- serving

_CACHE: Dict[tuple, Dict[str, np.ndarray]] = {}


def split_columns(data_cfg: Mapping[str, Any], split: str) -> Dict[str, np.ndarray]:
    """The (hash-checked, cached) columns of ``split``, standardized when configured."""
    record = ensure_features(data_cfg)
    if split not in record["hashes"]:
        raise FeaturesError(f"features3: unknown split {split!r}; splits: {sorted(record['hashes'])}")
    directory = features_dir(data_cfg)
    key = (directory, split, bool(data_cfg.get("standardize", True)), record["hashes"][split])
    if key not in _CACHE:
        cols = load_columns(os.path.join(directory, f"{split}.npz"), record["hashes"][split])
        if data_cfg.get("standardize", True):
            ref = cols if split == "train" else load_columns(os.path.join(directory, "train.npz"))
            cols = dict(cols)
            for m in MODALITIES:
                present = ref["audio__present"] if m == "audio" else np.ones(len(ref[m]), bool)
                mean, std = standardizer(ref[m][present])
                cols[m] = ((cols[m] - mean) / std).astype(np.float32)
                if m == "audio":
                    cols[m] = np.where(cols["audio__present"][:, None], cols[m], 0.0).astype(np.float32)
        _CACHE[key] = cols
    return _CACHE[key]


def standardizer(x: np.ndarray) -> tuple:
    """Per-dimension mean and std of (N, D) ``x`` (std floored so constant dimensions stay finite)."""
    if len(x) == 0:
        return np.zeros(x.shape[1:], np.float32), np.ones(x.shape[1:], np.float32)
    return x.mean(0).astype(np.float32), np.maximum(x.std(0), 1e-6).astype(np.float32)


def batches(cols: Mapping[str, np.ndarray], *, num_classes: int, global_batch_size: int, seed: int, train: bool,
            start_step: int = 0, process_index: int = 0, process_count: int = 1, shuffle: bool = True,
            class_weights: Any = None) -> Iterator[Dict[str, Any]]:
    """Batches of feature columns (the order of :mod:`mmjax.data.pipeline`, see the module docstring)."""
    from mmjax.data import preprocess as pp

    if global_batch_size <= 0 or global_batch_size % process_count:
        raise FeaturesError(f"features3: global_batch_size {global_batch_size} must be a positive multiple of "
                            f"the process count {process_count}")
    if not 0 <= process_index < process_count:
        raise FeaturesError(f"features3: process_index {process_index} not in [0, {process_count})")
    local = global_batch_size // process_count
    lo, hi = process_index * local, (process_index + 1) * local
    n = len(cols["label"])
    weights = None
    if train and class_weights is not None:
        try:
            weights = pp.class_weight_table(cols["label"], num_classes, class_weights)
        except ValueError as e:
            raise FeaturesError(f"features3: data.{e}") from None

    def assemble(idx, valid=None):
        inputs = {m: cols[m][idx] for m in MODALITIES}
        present = {"audio": cols["audio__present"][idx]}
        present.update({m: np.ones(len(idx), bool) for m in MODALITIES if m != "audio"})
        batch = {"inputs": inputs, "modality_mask": present, "label": cols["label"][idx]}
        if valid is not None:
            batch["weight"] = valid.astype(np.float32)
        elif weights is not None:
            batch["weight"] = weights[batch["label"]].astype(np.float32)
        else:
            batch["weight"] = np.ones(len(idx), np.float32)
        return batch

    if train:
        per_epoch = n // global_batch_size
        if per_epoch == 0:
            raise FeaturesError(f"features3: {n} examples, fewer than global_batch_size {global_batch_size}")
        step, perm_epoch, perm = start_step, None, None
        while True:
            epoch, k = divmod(step, per_epoch)
            if epoch != perm_epoch:
                perm = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
                perm_epoch = epoch
            gidx = perm[k * global_batch_size: (k + 1) * global_batch_size]
            yield assemble(gidx[lo:hi])
            step += 1
    else:
        for step in range(start_step, -(-n // global_batch_size)):
            gidx = np.arange(step * global_batch_size, (step + 1) * global_batch_size)
            valid = gidx < n
            gidx = np.where(valid, gidx, 0)
            yield assemble(gidx[lo:hi], valid[lo:hi])


def make_iterator(data_cfg: Mapping[str, Any], split: str, *, global_batch_size: int, seed: int, train: bool,
                  start_step: int = 0, process_index: Optional[int] = None,
                  process_count: Optional[int] = None) -> Iterator[Dict[str, Any]]:
    """This process's batches of ``split`` (extracting the features first if needed)."""
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    cols = split_columns(data_cfg, split)
    return batches(cols, num_classes=len(_class_names(data_cfg)), global_batch_size=global_batch_size, seed=seed,
                   train=train, start_step=start_step, process_index=process_index, process_count=process_count,
                   shuffle=bool(data_cfg.get("shuffle", True)), class_weights=data_cfg.get("class_weights"))
