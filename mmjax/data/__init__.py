"""Input pipelines: tfds builders (av_digits, stamps, features3), random-access sources read through Grain, batches.

Importing this package, and reading a built dataset, never imports tensorflow;
building and converting datasets do, when first used. See :mod:`mmjax.data.pipeline` for the batch contract and
:mod:`mmjax.data.config` for the data config keys.
"""
from mmjax.data.config import base_config, default_config
from mmjax.data.errors import DataConfigError, DataError
from mmjax.data.factory import data_info, make_data
from mmjax.data.global_batch import to_global
from mmjax.data.pipeline import dataset_info, make_iterator, split_columns
from mmjax.data.info import DatasetInfo, ModalityInfo
from mmjax.data.convert import convert

__all__ = [
    "DataConfigError", "DataError", "DatasetInfo", "ModalityInfo", "base_config", "data_info", "dataset_info",
    "convert", "default_config", "make_data", "make_iterator", "split_columns", "to_global",
]
