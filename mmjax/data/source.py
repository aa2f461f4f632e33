"""Split sources: a split decoded once into in-memory numpy arrays ("columns").

Two interchangeable sources produce the same columns:

* ``tf``: reads the tfds dataset and decodes/resizes with a parallel tf.data map
  (the only code path that imports tensorflow, lazily);
* ``numpy``: loads the ``.npz`` export of those columns, written once by
  :func:`export` (``python -m experiments data export NAME``), for machines
  without tensorflow.

Columns: for each modality m, ``m`` (N, ...) (images uint8, text int32 ids,
audio in its stored dtype, vectors float32) and, for text and audio,
``m__length`` (N,) int32, for images ``m__undecodable`` (N,) bool (bytes that
failed to decode, zero image); plus ``label`` and ``index`` (position in the
split). Every example of the split is there: what is done with bad ones is the
pipeline's choice (:mod:`mmjax.data.bad_examples`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from mmjax.data import preprocess as pp
from mmjax.data.config import resolve_data_dir
from mmjax.data.errors import DataConfigError

OWN_BUILDERS = ("av_digits", "stamps")
Columns = Dict[str, np.ndarray]


@dataclasses.dataclass
class ModalityInfo:
    kind: str
    shape: Tuple[int, ...]  # per example
    dtype: str
    sequence: bool  # has a token_mask


@dataclasses.dataclass
class DatasetInfo:
    """What a model needs to know about a data config's dataset."""

    name: str
    num_classes: int
    class_names: List[str]
    modalities: Dict[str, ModalityInfo]
    splits: Dict[str, int]
    hashes: Dict[str, str]  # split -> content sha256 (builders that record one)
    label_kind: str = "class"
    # split -> {reason: count, "examples", "kept", "policy"} for splits loaded in this process.
    bad_examples: Dict[str, Dict[str, Any]] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "DatasetInfo":
        d = dict(d)
        d["modalities"] = {k: ModalityInfo(**{**v, "shape": tuple(v["shape"])}) for k, v in d["modalities"].items()}
        return cls(**d)


def stage_key(cfg) -> str:
    """Hash of everything that changes the decoded columns (not augmentation or corruption)."""
    mods = {
        m: {k: (list(v) if isinstance(v, tuple) else v) for k, v in mc.items() if k in ("feature", "kind", "size", "max_len", "index", "length")}
        for m, mc in sorted(cfg.modalities.items())
    }
    blob = json.dumps({"name": cfg.name, "label": cfg.label, "label_kind": cfg.label_kind, "modalities": mods}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def export_dir(cfg) -> str:
    return os.path.expanduser(cfg.get("export_dir") or os.path.join(resolve_data_dir(cfg.data_dir), "mmjax_numpy"))


def _export_paths(cfg, split: str) -> Tuple[str, str]:
    base = os.path.join(export_dir(cfg), cfg.name.replace("/", "__") + "-" + stage_key(cfg))
    return os.path.join(base, f"{split.replace(':', '_')}.npz"), os.path.join(base, "info.json")


# ---------------------------------------------------------------- tensorflow side


def _tfds():
    import tensorflow as tf
    import tensorflow_datasets as tfds

    # Keep tensorflow off accelerators: jax owns them.
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
        pass
    from mmjax.data import builders

    builders.register()
    return tf, tfds


def builder(cfg, *, prepare: bool = True):
    """The tfds builder of ``cfg.name``; builds mmjax's own datasets on first use."""
    tf, tfds = _tfds()
    data_dir = resolve_data_dir(cfg.data_dir)
    try:
        b = tfds.builder(cfg.name, data_dir=data_dir)
    except Exception as e:  # tfds raises several types for unknown names/configs
        import difflib

        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        close = difflib.get_close_matches(cfg.name.split("/")[0], tfds.list_builders(), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise DataConfigError(f"unknown tfds dataset {cfg.name!r} ({first_line}).{hint}") from None
    if not b.is_prepared():
        if _download_is_mocked(b):  # under tfds.testing.mock_data nothing is read from disk
            return b
        if cfg.name.split("/")[0] in OWN_BUILDERS and prepare:
            b.download_and_prepare()
        elif prepare:
            raise DataConfigError(
                f"dataset {cfg.name!r} is not prepared in {data_dir} and nothing is downloaded at run time: "
                f"prepare it on a machine with network (tfds build {cfg.name} --data_dir {data_dir})"
            )
    return b


def _download_is_mocked(b) -> bool:
    return getattr(type(b).download_and_prepare, "__name__", "") == "mock_download_and_prepare"


def _get(ex, path: str):
    for part in path.split("/"):
        if part not in ex:
            raise DataConfigError(f"feature path {path!r}: no {part!r} among {sorted(ex)}")
        ex = ex[part]
    return ex


def _feature(features, path: str):
    for part in path.split("/"):
        sub = getattr(features, "feature", None)  # tfds.features.Sequence
        if sub is not None and not hasattr(features, "keys"):
            features = sub
        if part not in features.keys():
            raise DataConfigError(f"feature path {path!r}: no {part!r} among {sorted(features.keys())}")
        features = features[part]
    return features


def infer_modalities(cfg, b) -> None:
    """Fills ``cfg.modalities`` from the builder's features when the config names none."""
    import tensorflow_datasets as tfds

    from mmjax.data.config import _modality

    if cfg.modalities:
        return
    found = {}
    for key, f in b.info.features.items():
        if isinstance(f, tfds.features.Image):
            found[key] = _modality(kind="image", feature=key)
        elif isinstance(f, tfds.features.Text):
            found[key] = _modality(kind="text", feature=key)
        elif isinstance(f, tfds.features.Audio):
            found[key] = _modality(kind="audio", feature=key)
    if not found:
        raise DataConfigError(f"{cfg.name}: no image/text/audio features to use; set data config 'modalities'")
    cfg.modalities = found
    if cfg.label and cfg.label not in b.info.features.keys():
        cfg.label = None


def _label_names(cfg, b) -> List[str]:
    import tensorflow_datasets as tfds

    if not cfg.label:
        return []
    f = _feature(b.info.features, cfg.label)
    f = getattr(f, "feature", f)
    if isinstance(f, tfds.features.ClassLabel):
        return list(f.names)
    if cfg.num_classes:
        return [str(i) for i in range(cfg.num_classes)]
    raise DataConfigError(f"{cfg.name}: label {cfg.label!r} is not a ClassLabel; set data config num_classes")


def tf_info(cfg) -> DatasetInfo:
    b = builder(cfg, prepare=False)
    infer_modalities(cfg, b)
    names = _label_names(cfg, b)
    mods = {}
    for m, mc in sorted(cfg.modalities.items()):
        f = _feature(b.info.features, mc.feature)
        if mc.kind == "image":
            h, w, c = f.shape
            if mc.size:
                h, w = mc.size
            mods[m] = ModalityInfo("image", (h, w, c), "float32", False)
        elif mc.kind == "text":
            mods[m] = ModalityInfo("text", (mc.max_len,), "int32", True)
        elif mc.kind == "audio":
            mods[m] = ModalityInfo("audio", (mc.length,), "float32", True)
        else:
            mods[m] = ModalityInfo("vector", tuple(f.shape), "float32", False)
    hashes = dict(b.info.metadata.get("content_sha256", {})) if b.info.metadata else {}
    return DatasetInfo(
        name=cfg.name,
        num_classes=len(names),
        class_names=names,
        modalities=mods,
        splits={k: v.num_examples for k, v in b.info.splits.items()},
        hashes=hashes,
        label_kind=cfg.label_kind,
    )


def tf_columns(cfg, split: str) -> Columns:
    """Decodes a whole split with a parallel tf.data map into numpy columns."""
    tf, tfds = _tfds()
    b = builder(cfg)
    infer_modalities(cfg, b)
    names = _label_names(cfg, b)
    base_split = re.split(r"[\[+]", split)[0]
    if base_split not in b.info.splits and not _download_is_mocked(b):
        raise DataConfigError(f"{cfg.name} has no split {split!r}; splits: {sorted(b.info.splits)}")
    mods = dict(sorted(cfg.modalities.items()))

    def select(ex, decode_images=True):
        out = {}
        for m, mc in mods.items():
            x = _get(ex, mc.feature)
            if mc.kind == "image":
                if not decode_images:
                    out[m] = x  # encoded bytes (tfds.decode.SkipDecoding), decoded on the host
                    continue
                if mc.size:
                    x = tf.image.resize(x, tuple(mc.size), antialias=True)
                    x = tf.cast(tf.clip_by_value(tf.round(x), 0, 255), tf.uint8)
                out[m] = x
            elif mc.kind == "text":
                if x.shape.rank == 1:
                    x = tf.cond(tf.size(x) > mc.index, lambda: x[mc.index], lambda: tf.constant(""))
                out[m] = x
            elif mc.kind == "audio":
                x = tf.reshape(x, [-1])[: mc.length]
                out[m + "__length"] = tf.shape(x)[0]
                out[m] = tf.pad(x, [[0, mc.length - tf.shape(x)[0]]])
            else:
                out[m] = tf.cast(x, tf.float32)
        if cfg.label:
            y = _get(ex, cfg.label)
            if cfg.label_kind == "multi_hot":
                y = tf.reduce_max(tf.one_hot(y, len(names), dtype=tf.float32), axis=0)
                y = tf.reshape(y, [len(names)])
            out["label"] = y
        return out

    def with_position(i, ex, decode_images=True):
        out = select(ex, decode_images)
        out["__position"] = i
        return out

    # Fast path: tfds decodes the images inside the parallel map; an example whose decoding
    # fails is dropped here (ignore_errors) and found again below by its position.
    ds = b.as_dataset(split=split, shuffle_files=False).enumerate()
    ds = ds.map(with_position, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).ignore_errors()
    parts = _collect(ds.batch(256).prefetch(2))
    got = parts.pop("__position", np.zeros((0,), np.int64))
    image_mods = {m: mc for m, mc in mods.items() if mc.kind == "image"}
    for m in image_mods:
        parts[m + "__undecodable"] = np.zeros(len(got), bool)
    raw = b.as_dataset(split=split, shuffle_files=False, decoders=_skip_decoding(image_mods))
    total = int(raw.cardinality())
    if total < 0:
        total = int(raw.reduce(np.int64(0), lambda c, _: c + 1))
    lost = np.setdiff1d(np.arange(total), got)
    if lost.size:
        # Slow path, only for the examples that failed: decode their bytes one by one on the host.
        lost_t = tf.constant(lost, tf.int64)
        ds2 = raw.enumerate().filter(lambda i, ex: tf.reduce_any(tf.equal(i, lost_t)))
        ds2 = ds2.map(lambda i, ex: with_position(i, ex, decode_images=False))
        fixed = _collect(ds2.batch(256))
        fixed_pos = fixed.pop("__position")
        for m, mc in image_mods.items():
            shape = _feature(b.info.features, mc.feature).shape
            shape = (tuple(mc.size) if mc.size else tuple(shape[:2])) + (shape[2],)
            images, bad = _decode_images_host(tf, fixed[m], shape, bool(mc.size))
            fixed[m], fixed[m + "__undecodable"] = images, bad
        failed = ~np.any([fixed[m + "__undecodable"] for m in image_mods], axis=0) if image_mods else np.ones(len(fixed_pos), bool)
        if failed.any():
            from mmjax.data.errors import DataError

            raise DataError(
                f"{cfg.name} split {split!r}: example {int(fixed_pos[failed][0])} failed to read "
                f"for a reason other than image decoding ({int(failed.sum())} such example(s))"
            )
        order = np.argsort(np.concatenate([got, fixed_pos]), kind="stable")
        parts = {k: (np.concatenate([parts[k], fixed[k]]) if k in parts else fixed[k])[order] for k in fixed}
    cols: Columns = dict(parts)
    n = len(cols[next(iter(mods))]) if cols else 0
    for m, mc in mods.items():
        if mc.kind == "text":
            texts = list(cols[m])
            cols[m], mask = pp.tokenize_bytes(texts, mc.max_len)
            # An empty text has length 0 (BOS/EOS do not count); bad_examples decides its fate.
            empty = np.array([len(t) == 0 for t in texts], bool)
            cols[m + "__length"] = np.where(empty, 0, mask.sum(1)).astype(np.int32)
        elif mc.kind == "audio":
            cols[m + "__length"] = cols[m + "__length"].astype(np.int32)
    if "label" in cols and cfg.label_kind == "class":
        cols["label"] = cols["label"].astype(np.int32)
    cols["index"] = np.arange(n, dtype=np.int64)
    return cols


def _collect(ds) -> Columns:
    parts: Dict[str, List[np.ndarray]] = {}
    for batch in ds.as_numpy_iterator():
        for k, v in batch.items():
            parts.setdefault(k, []).append(v)
    return {k: np.concatenate(v) for k, v in parts.items()}


def _skip_decoding(image_mods) -> Dict[str, Any]:
    """tfds decoders that keep the encoded bytes of the image features (nested by feature path)."""
    import tensorflow_datasets as tfds

    decoders: Dict[str, Any] = {}
    for mc in image_mods.values():
        node = decoders
        *parents, leaf = mc.feature.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = tfds.decode.SkipDecoding()
    return decoders


def decode_images_host(encoded, shape: Tuple[int, int, int], resize: bool) -> Tuple[np.ndarray, np.ndarray]:
    """Encoded image bytes (N,) -> uint8 (N, H, W, C) and (N,) bool "undecodable" (zero image).

    Each example is decoded on its own so one corrupt file (e.g. a truncated PNG) is
    caught and reported instead of failing the whole split. ``resize``: resize to (H, W)
    as the fast path does (antialiased, rounded); otherwise a decoded image of another
    size than ``shape`` also counts as undecodable.
    """
    tf, _ = _tfds()
    return _decode_images_host(tf, encoded, shape, resize)


def _decode_images_host(tf, encoded, shape, resize):
    h, w, c = shape
    out = np.zeros((len(encoded), h, w, c), np.uint8)
    bad = np.zeros((len(encoded),), bool)
    for i, e in enumerate(encoded):
        try:
            x = tf.io.decode_image(e, channels=c, expand_animations=False)
            if resize:
                x = tf.image.resize(x, (h, w), antialias=True)
                x = tf.cast(tf.clip_by_value(tf.round(x), 0, 255), tf.uint8)
            x = x.numpy()
            if x.shape != (h, w, c):
                raise ValueError(f"decoded shape {x.shape}, expected {(h, w, c)}")
            out[i] = x
        except (tf.errors.OpError, ValueError):
            bad[i] = True
    return out, bad


# ---------------------------------------------------------------- numpy side


def export(cfg, splits: Optional[List[str]] = None) -> List[str]:
    """Writes the decoded columns of ``splits`` (all by default) and the info to .npz/.json."""
    info = tf_info(cfg)
    written = []
    for split in splits or list(info.splits):
        path, info_path = _export_paths(cfg, split)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        cols = tf_columns(cfg, split)
        tmp = path + ".tmp.npz"
        np.savez_compressed(tmp, **cols)  # padded audio and image borders compress several-fold
        os.replace(tmp, path)
        written.append(path)
    with open(info_path, "w") as f:
        json.dump(info.to_json(), f, indent=1)
    return written


def numpy_columns(cfg, split: str) -> Columns:
    path, _ = _export_paths(cfg, split)
    if not os.path.exists(path):
        raise DataConfigError(
            f"backend='numpy': no export of {cfg.name!r} split {split!r} at {path}; "
            f"write it once where tensorflow is installed: python -m experiments data export {cfg.name}"
        )
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def numpy_info(cfg) -> DatasetInfo:
    _, info_path = _export_paths(cfg, "x")
    if not os.path.exists(info_path):
        raise DataConfigError(
            f"backend='numpy': no export of {cfg.name!r} at {os.path.dirname(info_path)}; "
            f"run: python -m experiments data export {cfg.name}"
        )
    with open(info_path) as f:
        return DatasetInfo.from_json(json.load(f))
