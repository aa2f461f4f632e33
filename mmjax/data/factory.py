"""Where training and evaluation get data: ``make_data(config, split, ...)`` and ``data_info(config)``.

``config.data.name`` picks the source: ``"synthetic"`` / ``"synthetic_multimodal"``
are served in memory by :mod:`mmjax.data.synthetic` (tests and smoke runs);
every other name goes to the dataset pipeline (``mmjax.data.make_iterator``).
Either way the batches follow one contract (see ARCHITECTURE.md for the batch
format): eval padding rows carry ``weight`` 0, and with ``config.modalities``
set only those modalities are in the batches.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Iterator, Sequence

from mmjax.data import synthetic
from mmjax.data.errors import DataConfigError

Batches = Iterator[Dict[str, Any]]


def _data_config(config: Any) -> Any:
    data = getattr(config, "data", None)
    if data is None or not data.get("name"):
        raise DataConfigError("config.data.name is not set")
    return data


def make_data(config: Any, split: str, *, global_batch_size: int, seed: int, train: bool,
              start_step: int = 0) -> Batches:
    """An iterator of this process's numpy batches of ``split``.

    Each batch holds ``inputs`` {modality: (b, ...)}, ``label`` (b,), ``weight``
    (b,) and, where the source has them, ``token_mask`` / ``modality_mask``;
    ``b`` is this process's share of ``global_batch_size``. Train iterators are
    endless and start at batch ``start_step``; eval ones cover the split once.

    With ``config.modalities`` set (a unimodal baseline, a modality subset), the
    other modalities are dropped from the batches, whatever the source yields.

    Raises:
      DataConfigError: no ``config.data.name``, or a config the source rejects.
    """
    data = _data_config(config)
    kw = dict(global_batch_size=global_batch_size, seed=seed, train=train, start_step=start_step)
    if data.name in synthetic.NAMES:
        it = synthetic.make_iterator(data, split, **kw)
    else:
        it = _pipeline_batches(data, split, **kw)
    return keep_modalities(it, config)


def _pipeline_batches(data: Any, split: str, *, train: bool, **kw: Any) -> Batches:
    from mmjax.data import make_iterator  # the package imports this module: resolved at call time

    if not train and data.get("class_weights") is not None:
        # Class weights are for the loss: eval batches weighted by them would turn the
        # confusion matrix (accuracy, macro-F1) into class-reweighted counts.
        data = data.copy_and_resolve_references()
        data.class_weights = None
    return _valid_as_weight(make_iterator(data, split, train=train, **kw))


def _valid_as_weight(it: Batches) -> Batches:
    """Eval batches mark their padding rows with ``valid`` (b,); the steps weight examples by ``weight`` (b,)."""
    for batch in it:
        valid = batch.pop("valid", None)
        if valid is not None:
            w = valid.astype("float32")
            batch["weight"] = w if "weight" not in batch else batch["weight"] * w
        yield batch


def wanted_modalities(config: Any) -> Sequence[str]:
    """``config.modalities`` as a tuple of names ("a,b" or a sequence); () when unset (keep all)."""
    wanted = config.get("modalities") if hasattr(config, "get") else None
    if isinstance(wanted, str):
        wanted = [w.strip() for w in wanted.split(",") if w.strip()]
    return tuple(wanted or ())


def keep_modalities(it: Batches, config: Any) -> Batches:
    """``it`` with only ``config.modalities`` left in each batch's ``inputs`` / ``token_mask`` /
    ``modality_mask`` (``it`` itself when ``config.modalities`` is unset)."""
    wanted = wanted_modalities(config)
    return _only(it, wanted) if wanted else it


def _only(it: Batches, wanted: Sequence[str]) -> Batches:
    for batch in it:
        for key in ("inputs", "token_mask", "modality_mask"):
            if key in batch:
                batch[key] = {m: v for m, v in batch[key].items() if m in wanted}
        yield batch


def data_info(config: Any) -> Dict[str, Any]:
    """{"num_classes": C, "modalities": [...], ...} for the configured dataset.

    Text datasets of the pipeline also get ``"tokenizer"``: the byte tokenizer
    (as JSON) that their captions and prompts are encoded and decoded with.

    Raises:
      DataConfigError: no ``config.data.name``, or a dataset the source rejects.
    """
    data = _data_config(config)
    if data.name in synthetic.NAMES:
        return synthetic.info(data)
    from mmjax.data import dataset_info  # resolved at call time, as in _pipeline_batches

    info = dataset_info(data)
    info = dataclasses.asdict(info) if dataclasses.is_dataclass(info) else dict(info)
    if any(m.get("kind") == "text" for m in data.modalities.values()):
        from mmjax.tokenizer import ByteTokenizer
        info.setdefault("tokenizer", ByteTokenizer().to_json())
    return info
