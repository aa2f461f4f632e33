"""The data of the experiments: :mod:`mmjax.data.factory`, plus ``data.name == "features3"``.

``"features3"`` (precomputed feature vectors in .npz, numpy only) is served by
:mod:`experiments.features`; every other name goes to
:func:`mmjax.data.factory.make_data` / :func:`mmjax.data.factory.data_info`
(the synthetic sources and the dataset pipeline). The commands pass these two
functions to the training loop as its ``data_fn`` / ``info_fn``.
"""
from __future__ import annotations

from typing import Any, Dict, Iterator

from mmjax.data import factory


def _is_features3(config: Any) -> bool:
    data = getattr(config, "data", None)
    return data is not None and data.get("name") == "features3"


def make_data(config: Any, split: str, *, global_batch_size: int, seed: int, train: bool,
              start_step: int = 0) -> Iterator[Dict[str, Any]]:
    """An iterator of this process's numpy batches (the contract of :func:`mmjax.data.factory.make_data`)."""
    if not _is_features3(config):
        return factory.make_data(config, split, global_batch_size=global_batch_size, seed=seed, train=train,
                                 start_step=start_step)
    from experiments import features
    it = features.make_iterator(config.data, split, global_batch_size=global_batch_size, seed=seed, train=train,
                                start_step=start_step)
    return factory.keep_modalities(it, config)


def data_info(config: Any) -> Dict[str, Any]:
    """{"num_classes": C, "modalities": [...], ...} for the configured dataset."""
    if not _is_features3(config):
        return factory.data_info(config)
    from experiments import features
    return features.info(config.data)
