"""The input pipeline the training loop uses: ``make_iterator`` and ``dataset_info``.

A split is decoded once per process into numpy columns (tf.data with a parallel
map, or the tensorflow-free .npz export; see :mod:`mmjax.data.source`), the
fixed per-example corruption is applied once, and the result is cached in
memory. Batches are then gathered by index:

* train: epoch ``e`` visits the examples in the order
  ``default_rng([seed, e]).permutation(N)``; global step ``s`` is the
  ``s % steps_per_epoch``-th block of ``global_batch_size`` indices of epoch
  ``s // steps_per_epoch`` (the epoch's last partial block is dropped). So
  ``make_iterator(..., start_step=k)`` yields exactly what an uninterrupted
  iterator yields from step k on.
* eval (``train=False``): one pass in stored order; the last batch is padded
  (repeating example 0) and every eval batch carries ``"valid"`` (B,) bool.
* processes: process ``p`` of ``P`` takes rows ``[p*B/P, (p+1)*B/P)`` of each
  global batch, so processes read disjoint examples that together cover the
  global batch. Random draws (augmentation, modality dropout) are made for the
  whole global batch from ``default_rng([seed, step])`` and sliced, so an
  example is augmented the same way whatever the process count.

Batches (numpy): ``{"inputs": {m: array}, "token_mask": {m: (B, L) bool}``
(text and audio only) ``, "modality_mask": {m: (B,) bool}, "label": (B,) int32``
(or (B, C) float32 multi-hot) ``}`` plus ``"weight": (B,) float32`` with class
weights and ``"valid"`` in eval. A dropped or missing modality has zero inputs
and ``modality_mask`` False; its token_mask is left as is.

Scope: every split is held decoded in host memory (per process), which suits
the datasets this package builds and small public ones (MNIST, CIFAR, a few
GB at most). Datasets larger than host memory (e.g. COCO at 224 px) need a
streaming tf.data path that this module does not have yet.
"""
from __future__ import annotations

import copy
import queue
import threading
import zlib
from typing import Any, Dict, Iterator, Optional, Tuple

import ml_collections
import numpy as np

from mmjax.data import bad_examples
from mmjax.data import preprocess as pp
from mmjax.data import source
from mmjax.data.config import base_config, resolve_data_dir, validate
from mmjax.data.errors import DataConfigError
from mmjax.data.source import DatasetInfo

_COLUMN_CACHE: Dict[Tuple, Dict[str, np.ndarray]] = {}


def _prepared_config(data_config) -> ml_collections.ConfigDict:
    # A partial config ({"name": "stamps"}) gets every other key from the defaults.
    given = data_config.to_dict() if hasattr(data_config, "to_dict") else dict(data_config)
    cfg = ml_collections.ConfigDict({**base_config().to_dict(), **copy.deepcopy(given)})
    validate(cfg)
    if not cfg.modalities and cfg.backend == "tf":
        source.infer_modalities(cfg, source.builder(cfg, prepare=False))
    if not cfg.modalities:
        raise DataConfigError(f"data config for {cfg.name!r}: 'modalities' is empty")
    return cfg


def dataset_info(data_config) -> DatasetInfo:
    """num_classes, class_names, modalities (per-example shape/dtype), split sizes, content hashes,
    and ``bad_examples``: split -> counts per reason for the splits loaded so far in this process
    (see :mod:`mmjax.data.bad_examples`)."""
    cfg = _prepared_config(data_config)
    info = source.tf_info(cfg) if cfg.backend == "tf" else source.numpy_info(cfg)
    info.bad_examples = bad_examples.reports_for(cfg.name)
    return info


def split_columns(data_config, split: str) -> Dict[str, np.ndarray]:
    """The decoded, corrupted columns of a split (cached per process). Images stay uint8;
    audio becomes float32 in [-1, 1] (plus the fixed noise). Bad examples are already
    handled by the ``bad_examples`` policy (``index`` keeps the original positions)."""
    cfg = _prepared_config(data_config)
    return _columns(cfg, split)


def _columns(cfg, split: str) -> Dict[str, np.ndarray]:
    corruption = {m: (mc.get("occlusion"), mc.get("noise_std"), mc.get("snr_db"), mc.get("scale")) for m, mc in cfg.modalities.items()}
    key = (cfg.backend, resolve_data_dir(cfg.data_dir), source.export_dir(cfg), source.stage_key(cfg), split, cfg.corruption_seed, repr(sorted(corruption.items())), bad_examples.policy_of(cfg))
    if key in _COLUMN_CACHE:
        return _COLUMN_CACHE[key]
    cols = dict(source.tf_columns(cfg, split) if cfg.backend == "tf" else source.numpy_columns(cfg, split))
    # Before the fixed corruption: silence is judged on the stored samples, not on added noise.
    cols = bad_examples.apply(cfg, split, cols)
    split_id = zlib.crc32(split.encode())
    for i, (m, mc) in enumerate(sorted(cfg.modalities.items())):
        rng = np.random.default_rng([cfg.corruption_seed, split_id, i])
        if mc.kind == "image" and (mc.occlusion > 0 or mc.noise_std > 0):
            cols[m] = pp.corrupt_images(cols[m], rng, mc.occlusion, mc.noise_std)
        elif mc.kind == "audio":
            x = cols[m].astype(np.float32)
            if np.issubdtype(cols[m].dtype, np.integer):
                x = x / np.float32(mc.scale)
            cols[m] = pp.add_noise_at_snr(x, cols[m + "__length"], rng, mc.snr_db)
    _COLUMN_CACHE[key] = cols
    return cols


def clear_cache() -> None:
    """Forgets the decoded splits held in memory (e.g. after rebuilding a dataset)."""
    _COLUMN_CACHE.clear()


class _GlobalDraws:
    """A Generator look-alike that draws for the whole global batch and returns one process's rows."""

    def __init__(self, rng: np.random.Generator, total: int, lo: int, hi: int):
        self._rng, self._total, self._lo, self._hi = rng, total, lo, hi

    def _size(self, size):
        size = (size,) if np.isscalar(size) else tuple(size)
        return (self._total,) + size[1:]

    def _cut(self, x):
        return x[self._lo : self._hi]

    def integers(self, low, high=None, size=1):
        return self._cut(self._rng.integers(low, high, size=self._size(size)))

    def random(self, size=1, dtype=np.float64):
        return self._cut(self._rng.random(self._size(size), dtype=dtype))

    def uniform(self, low=0.0, high=1.0, size=1):
        return self._cut(self._rng.uniform(low, high, size=self._size(size)))

    def standard_normal(self, size=1, dtype=np.float64):
        return self._cut(self._rng.standard_normal(self._size(size), dtype=dtype))


def _assemble(cfg, cols, idx, draws, train: bool, weights: Optional[np.ndarray]) -> Dict[str, Any]:
    names = sorted(cfg.modalities)
    inputs, token_mask, present = {}, {}, []
    for m in names:
        mc = cfg.modalities[m]
        x = cols[m][idx]
        if mc.kind == "image":
            x = pp.normalize_images(x, mc.mean, mc.std)
            if train and (mc.augment_pad > 0 or mc.augment_flip):
                x = pp.augment_images(x, draws, mc.augment_pad, mc.augment_flip)
            # m__present exists only when bad_examples="missing" marked undecodable images.
            present.append(cols[m + "__present"][idx] if m + "__present" in cols else np.ones(len(idx), bool))
        elif mc.kind == "text":
            lengths = cols[m + "__length"][idx]
            token_mask[m] = x != pp.PAD_ID
            present.append(lengths > 0)
        elif mc.kind == "audio":
            lengths = cols[m + "__length"][idx]
            if train and (mc.augment_gain_db > 0 or mc.augment_shift > 0 or mc.augment_noise > 0):
                x, lengths = pp.augment_audio(x, lengths, draws, mc.augment_gain_db, mc.augment_shift, mc.augment_noise)
            token_mask[m] = pp.length_mask(lengths, x.shape[1])
            present.append(lengths > 0)
        else:
            x = x.astype(np.float32)
            present.append(np.ones(len(idx), bool))
        inputs[m] = x
    present = np.stack(present, 1)
    if train and cfg.modality_dropout:
        probs = [float(cfg.modality_dropout.get(m, 0.0)) for m in names]
        present = pp.modality_dropout(present, probs, draws)
    for j, m in enumerate(names):
        if not present[:, j].all():
            keep = present[:, j].reshape((-1,) + (1,) * (inputs[m].ndim - 1))
            inputs[m] = np.where(keep, inputs[m], 0).astype(inputs[m].dtype)
    batch: Dict[str, Any] = {
        "inputs": inputs,
        "modality_mask": {m: present[:, j] for j, m in enumerate(names)},
    }
    if token_mask:
        batch["token_mask"] = token_mask
    if "label" in cols:
        batch["label"] = cols["label"][idx]
        if weights is not None:
            batch["weight"] = weights[batch["label"]].astype(np.float32)
    return batch


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
    lo, hi = process_index * local, (process_index + 1) * local
    cols = _columns(cfg, split)
    n = len(cols["index"])
    weights = None
    if cfg.class_weights is not None:
        if "label" not in cols or cfg.label_kind != "class":
            raise DataConfigError("class_weights needs an integer class label")
        num_classes = len(dataset_info(cfg).class_names)
        weights = pp.class_weight_table(_columns(cfg, "train")["label"], num_classes, cfg.class_weights)

    def generate():
        if train:
            per_epoch = n // global_batch_size
            if per_epoch == 0:
                raise DataConfigError(f"split {split!r} has {n} examples, fewer than global_batch_size {global_batch_size}")
            step, perm_epoch, perm = start_step, None, None
            while True:
                epoch, k = divmod(step, per_epoch)
                if epoch != perm_epoch:
                    perm = np.random.default_rng([seed, epoch]).permutation(n) if cfg.shuffle else np.arange(n)
                    perm_epoch = epoch
                gidx = perm[k * global_batch_size : (k + 1) * global_batch_size]
                draws = _GlobalDraws(np.random.default_rng([seed, step, 1]), global_batch_size, lo, hi)
                yield _assemble(cfg, cols, gidx[lo:hi], draws, True, weights)
                step += 1
        else:
            steps = -(-n // global_batch_size)
            for step in range(start_step, steps):
                gidx = np.arange(step * global_batch_size, (step + 1) * global_batch_size)
                valid = gidx < n
                gidx = np.where(valid, gidx, 0)
                batch = _assemble(cfg, cols, gidx[lo:hi], None, False, weights)
                batch["valid"] = valid[lo:hi]
                yield batch

    return _prefetch(generate(), int(cfg.prefetch))


def _prefetch(it: Iterator, size: int) -> Iterator:
    """Runs ``it`` in a daemon thread, ``size`` batches ahead (numpy releases the GIL in the heavy ops)."""
    if size <= 0:
        yield from it
        return
    q: "queue.Queue" = queue.Queue(maxsize=size)
    done = object()
    stop = threading.Event()

    def work():
        try:
            for item in it:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as e:  # re-raised in the consumer
            q.put(e)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
