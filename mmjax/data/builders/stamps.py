"""``stamps``: Tux Paint stamps as a three-modality dataset (image, text, speech) + sound effects.

See :mod:`mmjax.data.builders.stamps_gen` for the source layout. Read from the
installed Debian package (``apt-get install tuxpaint-stamps-default``); the root
can be changed with $MMJAX_STAMPS_ROOT. Configs choose the description
language (text and recording): ``fr`` (default; most recordings), ``en`` (few
recordings: most English examples have no speech), ``es``, ``ru``, ``ca``.

Features: image (64, 64, 3) uint8; description text; speech and sound int16
(N,) at 8 kHz (N <= 4 s / 2 s; N = 0 when there is no recording, which the
pipeline reports as a missing modality); label (16 categories); fine_label
("category/sub"). Splits: train / test (80 / 20 by a hash of the stamp's path).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os

import numpy as np
import tensorflow_datasets as tfds

from mmjax.data.builders import stamps_gen as gen


def stamps_root() -> str:
    return os.environ.get("MMJAX_STAMPS_ROOT", gen.DEFAULT_ROOT)


@dataclasses.dataclass
class StampsConfig(tfds.core.BuilderConfig):
    language: str = "fr"


class Stamps(tfds.core.GeneratorBasedBuilder):
    """Tux Paint stamps: clip art, descriptions and their recordings (GPL-2)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [StampsConfig(name=l, description=f"descriptions in {l!r}", language=l) for l in ("fr", "en", "es", "ru", "ca")]
    DEFAULT_CONFIG_NAME = "fr"

    def _info(self) -> tfds.core.DatasetInfo:
        root = stamps_root()
        fine = gen.fine_names(gen.scan(root, self.builder_config.language)) if os.path.isdir(root) else None
        return self.dataset_info_from_configs(
            description="Tux Paint stamps (tuxpaint-stamps-default, GPL-2): clip art, text descriptions, recordings.",
            features=tfds.features.FeaturesDict(
                {
                    "id": np.int32,
                    "stem": tfds.features.Text(),
                    "image": tfds.features.Image(shape=(gen.IMAGE_SIZE, gen.IMAGE_SIZE, 3)),
                    "description": tfds.features.Text(),
                    "speech": tfds.features.Tensor(shape=(None,), dtype=np.int16, encoding=tfds.features.Encoding.ZLIB),
                    "sound": tfds.features.Tensor(shape=(None,), dtype=np.int16, encoding=tfds.features.Encoding.ZLIB),
                    "label": tfds.features.ClassLabel(names=list(gen.CATEGORIES)),
                    "fine_label": tfds.features.ClassLabel(names=fine) if fine else tfds.features.ClassLabel(num_classes=1),
                }
            ),
            metadata=tfds.core.MetadataDict(sample_rate=gen.SAMPLE_RATE, content_sha256={}, root=root),
            disable_shuffling=True,
            homepage="https://tuxpaint.org/",
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        stamps = gen.scan(stamps_root(), self.builder_config.language)
        return {s: self._generate_examples(s, [x for x in stamps if x.split == s]) for s in ("train", "test")}

    def _generate_examples(self, split, stamps):
        h = hashlib.sha256()
        for i, s in enumerate(stamps):
            ex = gen.example(s, i)
            for k in ("image", "speech", "sound"):
                h.update(np.ascontiguousarray(ex[k]).tobytes())
            h.update(ex["stem"].encode() + ex["description"].encode())
            yield i, ex
        self.info.metadata["content_sha256"][split] = h.hexdigest()
