"""Where the train/eval commands get data: ``make_data(config, split, ...)``.

``data.name == "synthetic"`` / ``"synthetic_multimodal"`` are served by
:mod:`experiments.synthetic` / :mod:`experiments.synthetic_multimodal`
(in-memory, for tests and smoke runs), ``"features3"`` by
:mod:`experiments.features` (precomputed feature vectors in .npz, numpy
only); every other name goes to
``mmjax.data.make_iterator`` (tf.data pipelines), imported only when needed so
the synthetic path never imports tensorflow.
"""
from __future__ import annotations

from typing import Any, Dict, Iterator

import dataclasses

from experiments import synthetic, synthetic_multimodal
from experiments.errors import UserError


def _data_config(config: Any) -> Any:
    data = getattr(config, "data", None)
    if data is None or not data.get("name"):
        raise UserError("config.data.name is not set")
    return data


def _mmjax_data():
    try:
        import mmjax.data as data_lib
    except ImportError as e:
        raise UserError(f"this experiment needs the data pipeline (mmjax.data), which failed to import: {e}") from None
    missing = [f for f in ("make_iterator", "dataset_info") if not hasattr(data_lib, f)]
    if missing:
        raise UserError(f"this experiment needs mmjax.data.{' and '.join(missing)}, which this install lacks")
    return data_lib


def make_data(config: Any, split: str, *, global_batch_size: int, seed: int, train: bool,
              start_step: int = 0) -> Iterator[Dict[str, Any]]:
    """An iterator of this process's numpy batches (see ARCHITECTURE.md for the batch format).

    With ``config.modalities`` set (a unimodal baseline, a modality subset), the
    other modalities are dropped from the batches, whatever the source yields.
    """
    it = _make_data(config, split, global_batch_size=global_batch_size, seed=seed, train=train,
                    start_step=start_step)
    wanted = config.get("modalities") if hasattr(config, "get") else None
    if isinstance(wanted, str):
        wanted = tuple(w.strip() for w in wanted.split(",") if w.strip())
    return _only(it, tuple(wanted)) if wanted else it


def _only(it: Iterator[Dict[str, Any]], wanted: tuple) -> Iterator[Dict[str, Any]]:
    for batch in it:
        for key in ("inputs", "token_mask", "modality_mask"):
            if key in batch:
                batch[key] = {m: v for m, v in batch[key].items() if m in wanted}
        yield batch


def _make_data(config: Any, split: str, *, global_batch_size: int, seed: int, train: bool,
              start_step: int = 0) -> Iterator[Dict[str, Any]]:
    data = _data_config(config)
    if data.name == "synthetic":
        return synthetic.make_iterator(data, split, global_batch_size=global_batch_size, seed=seed,
                                       train=train, start_step=start_step)
    if data.name == "synthetic_multimodal":
        return synthetic_multimodal.make_iterator(data, split, global_batch_size=global_batch_size, seed=seed,
                                                  train=train, start_step=start_step)
    if data.name == "features3":
        from experiments import features
        return features.make_iterator(data, split, global_batch_size=global_batch_size, seed=seed,
                                      train=train, start_step=start_step)
    if not train and data.get("class_weights") is not None:
        # Class weights are for the loss: eval batches weighted by them would turn the
        # confusion matrix (accuracy, macro-F1) into class-reweighted counts.
        data = data.copy_and_resolve_references()
        data.class_weights = None
    it = _mmjax_data().make_iterator(data, split, global_batch_size=global_batch_size, seed=seed,
                                     train=train, start_step=start_step)
    return _valid_as_weight(it)


def _valid_as_weight(it: Iterator[Dict[str, Any]]) -> Iterator[Dict[str, Any]]:
    """Eval batches mark their padding rows with ``valid``; the steps weight examples by ``weight``."""
    for batch in it:
        valid = batch.pop("valid", None)
        if valid is not None:
            w = valid.astype("float32")
            batch["weight"] = w if "weight" not in batch else batch["weight"] * w
        yield batch


def data_info(config: Any) -> Dict[str, Any]:
    """{"num_classes": C, "modalities": [...], ...} for the configured dataset."""
    data = _data_config(config)
    if data.name == "synthetic":
        return synthetic.info(data)
    if data.name == "synthetic_multimodal":
        return synthetic_multimodal.info(data)
    if data.name == "features3":
        from experiments import features
        return features.info(data)
    info = _mmjax_data().dataset_info(data)
    info = dataclasses.asdict(info) if dataclasses.is_dataclass(info) else dict(info)
    if any(m.get("kind") == "text" for m in data.modalities.values()):
        # the pipeline tokenises text with the byte tokenizer: captions and prompts decode with it
        from mmjax.tokenizer import ByteTokenizer
        info.setdefault("tokenizer", ByteTokenizer().to_json())
    return info
