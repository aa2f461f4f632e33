"""A tfds dataset (ArrayRecord) built from your own files, listed in a CSV or JSONL manifest.

The manifest format, the split rule, the class order and the checks are those of
:mod:`mmjax.data.builders.manifest_gen`; ``python -m experiments data build --from
manifest.csv --name NAME`` runs :func:`build`. The dataset lands in
``data_dir/NAME/1.0.0/`` and is read afterwards like any prepared tfds dataset,
by name and without tensorflow and without this module (``tfds.builder(NAME,
data_dir=...)`` finds it on disk: the builder class is made per build and never
registered, so any new name works).

Features per example:
  row: int32, the manifest row (1-based).
  label: ClassLabel over the sorted class names.
  per modality NAME: image (H, W, C) uint8 PNG; audio (N,) int16 mono at the
    metadata's ``sample_rate``, N <= the modality's length (the pipeline pads and
    masks); text: the string; vector (D,) float32.

Metadata: ``sample_rate`` (Hz, 0 without audio; read by
``mmjax.data.dataset_info``), ``content_sha256`` (split -> sha256 of the stored
examples, as av_digits), ``manifest`` (:func:`manifest_gen.describe`: the
manifest's path, modalities with their columns, kinds, shapes and lengths, the
split rule and the build notes), from which :func:`manifest_gen.recorded_data_config` makes the data
config that reads it
(no tensorflow, nor this module, needed).
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import types
from typing import Optional

import numpy as np
import tensorflow_datasets as tfds

from mmjax.data.builders import manifest_gen as gen
from mmjax.data.config import resolve_data_dir
from mmjax.data.errors import DataConfigError


class ManifestBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Builds the dataset of ``PLAN`` (a checked :class:`manifest_gen.Plan`); made per build by :func:`build`."""

    VERSION = tfds.core.Version(gen.VERSION)
    RELEASE_NOTES = {gen.VERSION: "Built from a manifest."}
    PLAN: gen.Plan

    def _feature(self, m: gen.Modality):
        if m.kind == "image":
            return tfds.features.Image(shape=m.shape, encoding_format="png")
        if m.kind == "audio":
            return tfds.features.Tensor(shape=(None,), dtype=np.int16, encoding=tfds.features.Encoding.ZLIB)
        if m.kind == "vector":
            return tfds.features.Tensor(shape=m.shape, dtype=np.float32)
        return tfds.features.Text()

    def _info(self) -> tfds.core.DatasetInfo:
        plan = self.PLAN
        features = {"row": np.int32, "label": tfds.features.ClassLabel(names=plan.class_names)}
        features.update({m.name: self._feature(m) for m in plan.modalities})
        return self.dataset_info_from_configs(
            description=f"Built by mmjax from the manifest {os.path.abspath(plan.manifest)}.",
            features=tfds.features.FeaturesDict(features),
            metadata=tfds.core.MetadataDict(sample_rate=plan.sample_rate, content_sha256={},
                                            manifest=gen.describe(plan)),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing is downloaded
        return {s: self._generate_examples(s) for s in self.PLAN.splits}

    def _generate_examples(self, split):
        h = hashlib.sha256()
        for i in self.PLAN.splits[split]:
            ex = gen.example(self.PLAN, i)
            for k in sorted(ex):
                v = ex[k]
                h.update(k.encode() + (v.encode("utf-8") if isinstance(v, str) else np.ascontiguousarray(v).tobytes()))
            yield i, ex
        self.info.metadata["content_sha256"][split] = h.hexdigest()


def check_name(name: str, data_dir: Optional[str] = None, overwrite: bool = False) -> None:
    """A name for a new dataset: lower-case snake_case, not a tfds or mmjax builder, and not yet in
    ``data_dir`` unless ``overwrite`` (and then only a dataset built from a manifest is replaced)."""
    from mmjax.data.builders import BUILDERS

    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise DataConfigError(f"--name {name!r}: a dataset name is lower-case letters, digits and '_' (e.g. my_data)")
    if name in BUILDERS or name in tfds.list_builders(with_community_datasets=False):
        raise DataConfigError(f"--name {name!r} is already a tfds dataset; choose another name")
    target = os.path.join(resolve_data_dir(data_dir), name)
    if os.path.exists(target) and not overwrite:
        raise DataConfigError(f"dataset {name!r} already exists in {target}: pass --overwrite to build it again")
    if os.path.exists(target) and gen.recorded(data_dir, name) is None:
        raise DataConfigError(f"{target} is not a dataset built from a manifest; not overwriting it")


def build(plan: gen.Plan, name: str, data_dir: Optional[str] = None, overwrite: bool = False):
    """Writes ``plan``'s dataset as ``data_dir/name/1.0.0`` (ArrayRecord; needs tensorflow) -> the tfds builder."""
    from mmjax.data import source

    check_name(name, data_dir, overwrite)
    source._needs_tensorflow(f"building {name!r}")
    data_dir = resolve_data_dir(data_dir)
    if os.path.exists(os.path.join(data_dir, name)):
        shutil.rmtree(os.path.join(data_dir, name))  # check_name: an earlier build from a manifest
    cls = types.new_class("ManifestDataset", (ManifestBuilder,), {"skip_registration": True},
                          lambda ns: ns.update(name=name, PLAN=plan, __module__=__name__))
    b = cls(data_dir=data_dir, file_format="array_record")
    b.download_and_prepare()
    return b

