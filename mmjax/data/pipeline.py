"""The input pipeline the training loop uses: ``make_iterator`` and ``dataset_info``.

Each process reads, by index, only its own rows of each global batch
(:class:`mmjax.data.source.SplitReader`), through a Grain dataset whose
background thread (or pool of ``read_threads`` threads) prepares ``prefetch``
batches ahead. Nothing decodes a whole split.

* train: epoch ``e`` visits the examples in the order
  ``default_rng([seed, e]).permutation(N)``; global step ``s`` is the
  ``s % steps_per_epoch``-th block of ``global_batch_size`` indices of epoch
  ``s // steps_per_epoch`` (the epoch's last partial block is dropped). So
  ``make_iterator(..., start_step=k)`` yields exactly what an uninterrupted
  iterator yields from step k on.
* eval (``train=False``): one pass in stored order; the last batch is padded
  (repeating example 0) and every eval batch carries ``"valid"`` (B,) bool.
* processes: process ``p`` of ``P`` takes rows ``[p*B/P, (p+1)*B/P)`` of each
  global batch. Every random draw is made from a generator of its own example:
  the fixed corruption from ``(corruption_seed, split, modality, index)``,
  augmentation and modality dropout from ``(seed, step, index)``. So an example
  looks the same whatever the process count, and a process draws only for its
  own rows.

Batches (numpy): ``{"inputs": {m: array}, "token_mask": {m: (B, L) bool}``
(text and audio only) ``, "modality_mask": {m: (B,) bool}, "label": (B,) int32``
(or (B, C) float32 multi-hot) ``}``; train batches also carry ``"weight"`` (B,)
float32 (class weights, 0 for an example dropped by ``bad_examples``), eval
batches ``"valid"``. Images are uint8 (B, H, W, C) and video clips uint8
(B, F, H, W, C): the consumer normalises
them with :func:`mmjax.data.normalize.normalize_images` (the training loop
does it on device). A dropped or missing modality has zero inputs and
``modality_mask`` False; its token_mask is left as is.
"""
from __future__ import annotations

import copy
import functools
import json
import os
import threading
import zlib
from typing import Any, Dict, Iterator, Optional

import ml_collections
import numpy as np

from mmjax.data import bad_examples
from mmjax.data import preprocess as pp
from mmjax.data import source
from mmjax.data.config import base_config, validate
from mmjax.data.draws import RowDraws
from mmjax.data.errors import DataConfigError
from mmjax.data.info import DatasetInfo
from mmjax.data.normalize import image_norms
from mmjax.data.video import corrupt_videos


def _prepared_config(data_config) -> ml_collections.ConfigDict:
    # A partial config ({"name": "stamps"}) gets every other key from the defaults.
    given = data_config.to_dict() if hasattr(data_config, "to_dict") else dict(data_config)
    cfg = ml_collections.ConfigDict({**base_config().to_dict(), **copy.deepcopy(given)})
    validate(cfg)
    if not cfg.modalities:
        source.infer_modalities(cfg, source.builder(cfg, prepare=False))
    if not cfg.modalities:
        raise DataConfigError(f"data config for {cfg.name!r}: 'modalities' is empty")
    return cfg


def dataset_info(data_config) -> DatasetInfo:
    """num_classes, class_names, modalities (per-example shape/dtype), split sizes, content hashes,
    the data directory, and ``bad_examples``: split -> counts per reason of the examples this
    process has read (see :mod:`mmjax.data.bad_examples`)."""
    cfg = _prepared_config(data_config)
    info = source.info(cfg)
    if not info.splits and os.path.isdir(info.data_dir):  # its folder written, its splits never recorded
        raise DataConfigError(
            f"dataset {cfg.name!r} in {info.data_dir} has no splits: its build did not finish; move that folder "
            f"away and build it again (python -m experiments data build {cfg.name})")
    info.bad_examples = bad_examples.reports_for(cfg.name)
    info.image_norms = image_norms(cfg)
    return info


def corrupt(cfg, split: str, cols: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """The fixed per-example corruption (also at eval); audio becomes float32 in [-1, 1]."""
    split_id = zlib.crc32(split.encode())
    index = cols["index"]
    for i, (m, mc) in enumerate(sorted(cfg.modalities.items())):
        if mc.kind == "image" and (mc.occlusion > 0 or mc.noise_std > 0):
            rng = RowDraws.keyed(index, cfg.corruption_seed, split_id, i)
            cols[m] = pp.corrupt_images(cols[m], rng, mc.occlusion, mc.noise_std)
        elif mc.kind == "video" and (mc.occlusion > 0 or mc.noise_std > 0):
            rng = RowDraws.keyed(index, cfg.corruption_seed, split_id, i)
            cols[m] = corrupt_videos(cols[m], rng, mc.occlusion, mc.noise_std)
        elif mc.kind == "audio":
            x = cols[m].astype(np.float32)
            if np.issubdtype(cols[m].dtype, np.integer):
                x = x / np.float32(mc.scale)
            if mc.snr_db is not None:
                x = pp.add_noise_at_snr(x, cols[m + "__length"], RowDraws.keyed(index, cfg.corruption_seed, split_id, i),
                                        mc.snr_db)
            cols[m] = x
    return cols


def _assemble(cfg, cols, draws, train: bool) -> Dict[str, Any]:
    names = sorted(cfg.modalities)
    inputs, token_mask, present = {}, {}, []
    n = len(cols["index"])
    for m in names:
        mc = cfg.modalities[m]
        x = cols[m]
        if mc.kind == "image":  # stays uint8: normalised where it lands (mmjax.data.normalize)
            if train and (mc.augment_pad > 0 or mc.augment_flip):
                fill = np.round(255.0 * np.asarray(mc.mean, np.float32)).astype(np.uint8)  # the mean: 0 once normalised
                x = pp.augment_images(x, draws, mc.augment_pad, mc.augment_flip, fill=fill)
            # m__present exists only when bad_examples="missing" marked undecodable images.
            present.append(cols.get(m + "__present", np.ones(n, bool)))
        elif mc.kind == "text":  # a checkpoint tokenizer's own mask (its pad id may not be 0), else ids != 0
            token_mask[m] = cols[m + "__mask"] if m + "__mask" in cols else x != pp.PAD_ID
            present.append(cols[m + "__length"] > 0)
        elif mc.kind == "audio":
            lengths = cols[m + "__length"]
            if train and (mc.augment_gain_db > 0 or mc.augment_shift > 0 or mc.augment_noise > 0):
                x, lengths = pp.augment_audio(x, lengths, draws, mc.augment_gain_db, mc.augment_shift, mc.augment_noise)
            token_mask[m] = pp.length_mask(lengths, x.shape[1])
            present.append(lengths > 0)
        elif mc.kind == "video":  # stays uint8 (B, F, H, W, C), normalised where it lands like images
            present.append(np.ones(n, bool))
        else:
            x = x.astype(np.float32)
            present.append(cols.get(m + "__present", np.ones(n, bool)))  # from the modality's ``present`` feature
        inputs[m] = x
    present = np.stack(present, 1)
    if train and cfg.modality_dropout:
        probs = [float(cfg.modality_dropout.get(m, 0.0)) for m in names]
        present = pp.modality_dropout(present, probs, draws)
    for j, m in enumerate(names):
        if not present[:, j].all():
            keep = present[:, j].reshape((-1,) + (1,) * (inputs[m].ndim - 1))
            inputs[m] = np.where(keep, inputs[m], 0).astype(inputs[m].dtype)
    batch: Dict[str, Any] = {"inputs": inputs, "modality_mask": {m: present[:, j] for j, m in enumerate(names)}}
    if token_mask:
        batch["token_mask"] = token_mask
    if "label" in cols:
        batch["label"] = cols["label"]
    return batch


class _Order:
    """Global example indices of each step (train: shuffled epochs; eval: stored order, padded)."""

    def __init__(self, n: int, global_batch_size: int, seed: int, shuffle: bool):
        self.n, self.b, self.seed, self.shuffle = n, global_batch_size, seed, shuffle
        self._lock = threading.Lock()
        self._perm_epoch, self._perm = None, None

    def train(self, step: int) -> np.ndarray:
        per_epoch = self.n // self.b
        epoch, k = divmod(step, per_epoch)
        with self._lock:  # one permutation in memory, shared by the reading threads
            if epoch != self._perm_epoch:
                rng = np.random.default_rng([self.seed, epoch])
                self._perm = rng.permutation(self.n) if self.shuffle else np.arange(self.n)
                self._perm_epoch = epoch
            perm = self._perm
        return perm[k * self.b : (k + 1) * self.b]

    def eval(self, step: int):
        gidx = np.arange(step * self.b, (step + 1) * self.b)
        valid = gidx < self.n
        return np.where(valid, gidx, 0), valid


def _batch(step: int, *, cfg, reader, order: _Order, lo: int, hi: int, seed: int, train: bool,
           weights: Optional[np.ndarray]) -> Dict[str, Any]:
    """This process's rows of global step ``step``, read, checked, corrupted, augmented, assembled."""
    if train:
        rows, valid = order.train(step)[lo:hi], None
    else:
        rows, valid = order.eval(step)
        rows, valid = rows[lo:hi], valid[lo:hi]
    cols = reader.read(rows)
    cols, keep = bad_examples.apply(cfg, reader.split, cols)
    cols = corrupt(cfg, reader.split, cols)
    draws = RowDraws.keyed(rows, seed, step, 1) if train else None
    batch = _assemble(cfg, cols, draws, train)
    if weights is not None and "label" in batch:
        batch["weight"] = weights[batch["label"]].astype(np.float32)
    if train:
        batch["weight"] = batch.get("weight", np.ones(len(rows), np.float32)) * keep
    else:
        batch["valid"] = valid & keep
    return batch


@functools.lru_cache(maxsize=8)
def _train_labels(cfg_json: str, split: str) -> np.ndarray:
    """The integer labels of a whole split, read once per process (for ``class_weights="balanced"``)."""
    cfg = ml_collections.ConfigDict(json.loads(cfg_json))
    reader = source.SplitReader(cfg, split)
    chunks = [reader.read(np.arange(i, min(i + 1024, len(reader))))["label"] for i in range(0, len(reader), 1024)]
    return np.concatenate(chunks) if chunks else np.zeros((0,), np.int32)


def _class_weights(cfg, reader) -> Optional[np.ndarray]:
    if cfg.class_weights is None:
        return None
    if not cfg.label or cfg.label_kind != "class":
        raise DataConfigError("class_weights needs an integer class label")
    num_classes = len(reader.names)
    labels = _train_labels(cfg.to_json(), "train") if cfg.class_weights == "balanced" else np.zeros((0,), np.int32)
    try:
        return pp.class_weight_table(labels, num_classes, cfg.class_weights)
    except ValueError as e:
        raise DataConfigError(f"data config: {e}") from None


def make_iterator(
    data_config,
    split: str,
    *,
    global_batch_size: int,
    seed: int,
    train: bool,
    start_step: int = 0,
    process_index: Optional[int] = None,
    process_count: Optional[int] = None,
) -> Iterator[Dict[str, Any]]:
    """Batches of ``split`` for this process (see the module docstring for the order and format).

    Args:
      data_config: ConfigDict (keys in :mod:`mmjax.data.config`).
      split: tfds split name ("train", "test", "train[:80%]", ...).
      global_batch_size: examples per step over all processes; this process yields
        global_batch_size / process_count of them.
      seed: shuffling, augmentation and modality dropout seed.
      train: infinite shuffled epochs with augmentation and dropout; else one ordered pass.
      start_step: the global step to start from (resume).
      process_index, process_count: default jax.process_index() / jax.process_count().
    """
    cfg = _prepared_config(data_config)
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise DataConfigError(
            f"global_batch_size {global_batch_size} must be a positive multiple of the process count {process_count}"
        )
    if not 0 <= process_index < process_count:
        raise DataConfigError(f"process_index {process_index} not in [0, {process_count})")
    local = global_batch_size // process_count
    reader = source.SplitReader(cfg, split)
    n = len(reader)
    if train and n < global_batch_size:
        raise DataConfigError(f"split {split!r} has {n} examples, fewer than global_batch_size {global_batch_size}")
    order = _Order(n, global_batch_size, seed, bool(cfg.shuffle))
    stop = 2**62 if train else -(-n // global_batch_size)
    make = functools.partial(_batch, cfg=cfg, reader=reader, order=order, lo=process_index * local,
                             hi=(process_index + 1) * local, seed=seed, train=train,
                             weights=_class_weights(cfg, reader))
    if int(cfg.prefetch) <= 0:
        return (make(step) for step in range(start_step, stop))
    import grain

    steps = grain.MapDataset.range(start_step, max(stop, start_step)).map(make)
    if int(cfg.read_threads) <= 1:
        # One background thread runs the whole pipeline ahead: decoding here is mostly
        # GIL-bound Python, where several reading threads contend (av_digits: ~4.1k examples/s
        # against ~2.8k with Grain's 2-thread read pool on 2 cores).
        inline = steps.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
        return iter(grain.experimental.ThreadPrefetchIterDataset(inline, prefetch_buffer_size=int(cfg.prefetch)))
    options = grain.ReadOptions(num_threads=int(cfg.read_threads), prefetch_buffer_size=int(cfg.prefetch))
    return iter(steps.to_iter_dataset(options))


def split_columns(data_config, split: str, chunk: int = 512) -> Dict[str, np.ndarray]:
    """A whole split's columns after ``bad_examples`` and the fixed corruption, for inspection
    (``data info``, tests). Holds the split in memory; ``make_iterator`` never calls it.
    ``keep`` (N,) marks the examples the policy does not drop."""
    cfg = _prepared_config(data_config)
    reader = source.SplitReader(cfg, split)
    parts = []
    for i in range(0, len(reader), chunk):
        cols, keep = bad_examples.apply(cfg, split, reader.read(np.arange(i, min(i + chunk, len(reader)))))
        parts.append({**corrupt(cfg, split, cols), "keep": keep})
    keys = set().union(*parts) if parts else set()
    return {k: np.concatenate([p.get(k, _default(p, k)) for p in parts]) for k in keys}


def _default(part: Dict[str, np.ndarray], key: str) -> np.ndarray:
    # m__present appears only in chunks that had a bad image: elsewhere every image is present.
    return np.ones(len(part["index"]), bool)
