"""Input pipelines: tfds builders (av_digits, stamps), tf.data / numpy sources, batches.

Importing this package does not import tensorflow; the tf code paths import it
when first used. See :mod:`mmjax.data.pipeline` for the batch contract and
:mod:`mmjax.data.config` for the data config keys.
"""
from mmjax.data.config import base_config, default_config
from mmjax.data.errors import DataConfigError, DataError
from mmjax.data.global_batch import to_global
from mmjax.data.pipeline import dataset_info, make_iterator, split_columns
from mmjax.data.source import DatasetInfo, ModalityInfo, export

__all__ = [
    "DataConfigError", "DataError", "DatasetInfo", "ModalityInfo", "base_config", "dataset_info", "default_config",
    "export", "make_iterator", "split_columns", "to_global",
]
