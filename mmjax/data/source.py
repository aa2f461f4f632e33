"""Random-access split sources: a prepared tfds dataset read by example index, without tensorflow.

A split is opened with the builder's ``as_data_source`` (ArrayRecord files) and
read in batches of indices, so a process reads and decodes only the examples it
asks for and its memory does not grow with the split. mmjax's own builders
(``av_digits``, ``stamps``, ``features3``) write ArrayRecord; a public dataset
stored as TFRecord is converted once with :func:`mmjax.data.convert.convert` (``python -m
experiments data convert NAME``). Image features are read as encoded bytes and decoded in
:mod:`mmjax.data.decode`, one example at a time, so a damaged image makes an
undecodable example rather than a failed split.

Reading imports tensorflow_datasets (and Pillow for images) but never
tensorflow. Building a dataset and converting one need tensorflow (the
``data`` extra: ``pip install 'mmjax[data]'``).
"""
from __future__ import annotations

import difflib
import os
import re
from typing import Any, Dict, List, Sequence

import numpy as np

from mmjax.data import decode
from mmjax.data import records
from mmjax.data import preprocess as pp
from mmjax.data.config import resolve_data_dir
from mmjax.data.errors import DataConfigError, DataError
from mmjax.data.info import DatasetInfo, ModalityInfo

OWN_BUILDERS = ("av_digits", "av_digits_video", "features3", "stamps")


def _tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise DataConfigError(f"reading datasets needs tensorflow-datasets ({e}); pip install 'mmjax'") from None
    return tfds


def _needs_tensorflow(what: str) -> None:
    try:
        import tensorflow as tf
    except ImportError:
        raise DataConfigError(f"{what} needs tensorflow, which is not installed: pip install 'mmjax[data]'") from None
    try:  # tensorflow only writes files here; jax owns the accelerators
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
        pass


def is_own(name: str) -> bool:
    return name.split("/")[0] in OWN_BUILDERS


def _download_is_mocked(b) -> bool:
    return getattr(type(b).download_and_prepare, "__name__", "") == "mock_download_and_prepare"


def builder(cfg, *, prepare: bool = True):
    """The tfds builder of ``cfg.name``. mmjax's own datasets are built (ArrayRecord) on first use;
    with ``prepare`` the dataset must be readable by index (else a DataConfigError says what to run)."""
    tfds = _tfds()
    data_dir = resolve_data_dir(cfg.data_dir)
    if is_own(cfg.name):
        from mmjax.data import builders

        builders.register()
    b = _load_builder(tfds, cfg.name, data_dir)
    if _download_is_mocked(b) or not prepare:  # under tfds.testing.mock_data nothing is on disk
        return b
    if not b.is_prepared():
        if not is_own(cfg.name):
            raise DataConfigError(
                f"dataset {cfg.name!r} is not prepared in {data_dir} and nothing is downloaded at run time: "
                f"prepare it on a machine with network (tfds build {cfg.name} --data_dir {data_dir} "
                f"--file_format array_record)")
        _needs_tensorflow(f"building {cfg.name!r}")
        b = _load_builder(tfds, cfg.name, data_dir, file_format="array_record")
        b.download_and_prepare()
    if not _random_access(b):
        # A converted dataset lists ArrayRecord among its formats in dataset_info.json, which
        # tfds's code builders do not read back; the builder read from the directory does.
        b = tfds.builder_from_directory(str(b.data_dir))
    if not _random_access(b):
        if not is_own(cfg.name):
            raise DataConfigError(
                f"dataset {cfg.name!r} in {b.data_dir} is stored as {b.info.file_format.value}, which cannot be "
                f"read by index; convert it once (needs tensorflow): python -m experiments data convert {cfg.name}")
        from mmjax.data.convert import convert

        convert(cfg)  # an older TFRecord build of our own dataset
        b = tfds.builder_from_directory(str(b.data_dir))
    return b


def _load_builder(tfds, name: str, data_dir: str, **kwargs):
    try:
        return tfds.builder(name, data_dir=data_dir, **kwargs)
    except Exception as e:  # tfds raises several types for unknown names/configs
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        known = tfds.list_builders()
        if name.split("/")[0] in known and ("JSON" in first_line or "json" in first_line):
            raise DataConfigError(
                f"dataset {name!r} in {data_dir}: its prepared files are damaged ({first_line}); move "
                f"{os.path.join(data_dir, *name.split('/'))} away and build it again") from None
        close = difflib.get_close_matches(name.split("/")[0], known, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise DataConfigError(f"unknown tfds dataset {name!r} ({first_line}).{hint}") from None


def _random_access(b) -> bool:
    formats = {b.info.file_format, *getattr(b.info, "alternative_file_formats", ())}
    return any(getattr(f, "value", f) == "array_record" for f in formats)


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
    tfds = _tfds()
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


def label_names(cfg, b) -> List[str]:
    tfds = _tfds()
    if not cfg.label:
        return []
    f = _feature(b.info.features, cfg.label)
    f = getattr(f, "feature", f)
    if isinstance(f, tfds.features.ClassLabel):
        return list(f.names)
    if cfg.num_classes:
        return [str(i) for i in range(cfg.num_classes)]
    raise DataConfigError(f"{cfg.name}: label {cfg.label!r} is not a ClassLabel; set data config num_classes")


def info(cfg) -> DatasetInfo:
    """The dataset's classes, per-modality batch shapes, split sizes and recorded content hashes."""
    b = builder(cfg, prepare=False)
    infer_modalities(cfg, b)
    names = label_names(cfg, b)
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
        elif mc.kind == "video":  # (F, H, W, C): uint8 in batches, float32 once normalised like images
            mods[m] = ModalityInfo("video", tuple(f.shape), "float32", False)
        else:
            mods[m] = ModalityInfo("vector", tuple(f.shape), "float32", False)
    meta = dict(b.info.metadata) if b.info.metadata else {}
    zscore = {m: {"mean": mean.tolist(), "std": std.tolist()} for m, (mean, std) in standardize_stats(cfg, b).items()}
    return DatasetInfo(
        name=cfg.name, num_classes=len(names), class_names=names, modalities=mods,
        splits={k: v.num_examples for k, v in b.info.splits.items()},
        hashes=dict(meta.get("content_sha256", {})), label_kind=cfg.label_kind,
        data_dir=str(b.data_dir), sample_rate=int(meta.get("sample_rate", 0) or 0), standardize=zscore,
    )


class SplitReader:
    """The examples of one split by index: ``len(reader)``, ``reader.read(indices) -> columns``.

    Columns (see :mod:`mmjax.data.decode`) hold only the requested rows; nothing
    of the split is kept in memory besides the open files.
    """

    def __init__(self, cfg, split: str):
        b = builder(cfg)
        infer_modalities(cfg, b)
        base = re.split(r"[\[+]", split)[0]
        if base not in b.info.splits and not _download_is_mocked(b):
            raise DataConfigError(f"{cfg.name} has no split {split!r}; splits: {sorted(b.info.splits)}")
        self.cfg, self.split = cfg, split
        self.names = label_names(cfg, b)
        self.shapes = {m: tuple(_feature(b.info.features, mc.feature).shape or ())
                       for m, mc in cfg.modalities.items() if mc.kind == "image"}
        self.files = str(b.data_dir)
        self.standardize = standardize_stats(cfg, b)
        # Loaded once here and shared by the reading threads (TextPreprocess.encode only reads it).
        self.tokenizers = {m: pp.checkpoint_tokenizer(mc.tokenizer, mc.max_len, f"data config: modalities.{m}.tokenizer")
                           for m, mc in sorted(cfg.modalities.items())
                           if mc.kind == "text" and mc.get("tokenizer")}
        self._batched = not _download_is_mocked(b)  # tfds's mock source has no working __getitems__
        # (the mock also decodes its random images itself, so it gets no decoders)
        decoders = _skip_image_decoding(cfg) if self._batched else None
        self._source = b.as_data_source(split=split, decoders=decoders)
        # Only the features the config reads, parsed without tfds's generic converter (mmjax.data.records).
        self._records, self._parse = (records.for_split(cfg, b, split) if self._batched else None) or (None, None)

    def __len__(self) -> int:
        return len(self._source)

    def raw(self, indices: Sequence[int]) -> List[Dict[str, Any]]:
        """The stored examples at ``indices``, every feature (images still encoded)."""
        return self._examples(indices, needed_only=False)

    def _examples(self, indices: Sequence[int], needed_only: bool) -> List[Dict[str, Any]]:
        idx = [int(i) for i in indices]
        try:
            if needed_only and self._parse is not None:
                # Local files: one read per record beats ArrayRecord's batch read, which starts a thread
                # pool per call (~1.5 ms a batch of 32); object stores keep its parallel reads.
                stored = self._records.__getitems__(idx) if "://" in self.files else [self._records[i] for i in idx]
                return [self._parse(r) for r in stored]
            if self._batched and hasattr(self._source, "__getitems__"):
                return list(self._source.__getitems__(idx))
            return [self._source[i] for i in idx]
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:  # a damaged or missing record file: name it, never hang or drop silently
            shown = ", ".join(map(str, idx[:4])) + (", ..." if len(idx) > 4 else "")
            raise DataError(f"{self.cfg.name} split {self.split!r}: reading {len(idx)} example(s) ({shown}) from "
                            f"{self.files} failed: {' '.join(str(e).split())[:300]}") from None

    def read(self, indices: Sequence[int]) -> Dict[str, np.ndarray]:
        """Decoded columns of the examples at ``indices`` (``index`` holds the indices)."""
        cols = decode.columns(self.cfg, self._examples(indices, needed_only=True), self.names, self.shapes,
                              self.standardize, self.tokenizers)
        cols["index"] = np.asarray(indices, np.int64)
        return cols


def standardize_stats(cfg, b) -> Dict[str, Any]:
    """Vector modality with ``standardize`` -> (mean, std) float32 (D,), from the dataset
    metadata's ``standardize[feature]`` (the builder's train-split statistics)."""
    recorded = dict(b.info.metadata or {}).get("standardize") or {}
    stats = {}
    for m, mc in sorted(cfg.modalities.items()):
        if mc.kind != "vector" or not mc.get("standardize"):
            continue
        if mc.feature not in recorded:
            raise DataConfigError(f"{cfg.name}: modalities.{m}.standardize needs the dataset metadata's "
                                  f"standardize[{mc.feature!r}] (mean, std), which {b.data_dir} does not record")
        stats[m] = (np.asarray(recorded[mc.feature]["mean"], np.float32),
                    np.asarray(recorded[mc.feature]["std"], np.float32))
    return stats


def _skip_image_decoding(cfg) -> Dict[str, Any]:
    """tfds decoders that keep the encoded bytes of the image features (nested by feature path)."""
    tfds = _tfds()
    decoders: Dict[str, Any] = {}
    for mc in cfg.modalities.values():
        if mc.kind != "image":
            continue
        node = decoders
        *parents, leaf = mc.feature.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = tfds.decode.SkipDecoding()
    return decoders
