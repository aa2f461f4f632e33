"""A prepared TFRecord tfds dataset -> ArrayRecord beside it, once, so it can be read by index."""
from __future__ import annotations

import json
import os

from mmjax.data import source
from mmjax.data.config import resolve_data_dir
from mmjax.data.errors import DataConfigError


def convert(cfg) -> str:
    """Adds ArrayRecord copies of a prepared TFRecord dataset's shards beside them (once; needs tensorflow).

    The records are the same serialized examples, so nothing is decoded; ``dataset_info.json``
    then lists ``array_record`` among the dataset's file formats and tfds opens it by index.
    """
    source._needs_tensorflow(f"converting {cfg.name!r} to ArrayRecord")

    from tensorflow_datasets.core import file_adapters

    tfds = source._tfds()
    b = source.builder(cfg, prepare=False)
    if not b.is_prepared():
        raise DataConfigError(f"dataset {cfg.name!r} is not prepared in {resolve_data_dir(cfg.data_dir)}: nothing to convert")
    if source._random_access(b) or source._random_access(tfds.builder_from_directory(str(b.data_dir))):
        return str(b.data_dir)
    reader = file_adapters.ADAPTER_FOR_FORMAT[b.info.file_format]
    writer = file_adapters.ADAPTER_FOR_FORMAT[file_adapters.FileFormat.ARRAY_RECORD]
    suffix, new = f".{b.info.file_format.value}-", ".array_record-"
    for split in b.info.splits.values():
        for path in split.filepaths:
            out = os.path.join(os.path.dirname(os.fspath(path)), os.path.basename(os.fspath(path)).replace(suffix, new))
            records = ((i, r.numpy()) for i, r in enumerate(reader.make_tf_data(path)))
            writer.write_examples(out + ".incomplete", records)
            os.replace(out + ".incomplete", out)
    info_path = os.path.join(os.fspath(b.data_dir), "dataset_info.json")
    with open(info_path, encoding="utf-8") as f:
        meta = json.load(f)
    meta["alternativeFileFormats"] = sorted({*meta.get("alternativeFileFormats", []), "array_record"})
    with open(info_path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2)
    os.replace(info_path + ".tmp", info_path)
    return str(b.data_dir)
