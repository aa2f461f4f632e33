"""Data configs: an ml_collections ConfigDict per dataset, and their keys.

Keys of a data config:
  name: tfds name, optionally with a builder config ("av_digits", "av_digits/tiny", "cifar10").
  data_dir: tfds data dir; None -> $MMJAX_DATA_DIR, else ~/tensorflow_datasets.
  label: feature path of the integer class label ("label"), or None (no "label" in batches).
  label_kind: "class" ((B,) int32) or "multi_hot" ((B, C) float32 from a sequence of labels).
  num_classes: only needed for multi_hot labels without class names.
  modalities: modality name -> ConfigDict with
    feature: feature path in the tfds example, "/" between nesting levels ("captions/text").
    kind: "image" | "text" | "audio" | "vector" | "video".
    image: size (H, W) or None to keep the stored size; mean, std (per channel, in [0, 1] units);
      occlusion, noise_std: fixed per-example corruption (difficulty knob, also at eval);
      augment_pad (random crop after zero padding), augment_flip (train only).
    text: max_len; index: which element to take from a sequence of texts (e.g. COCO's 5 captions);
      tokenizer: None (mmjax's byte tokenizer, pad 0) or a model directory holding ``tokenizer.json``
      (a converted tower's checkpoint): ids and token_mask as that tower reads them
      (:func:`mmjax.encoders.hf.text_preprocess`: its special tokens, its pad id, loaded once per reader).
    audio: length (samples, crop/pad, mask over real samples); scale (divide int samples by it);
      snr_db: fixed per-example white noise at this SNR (None: clean);
      augment_gain_db, augment_shift, augment_noise (train only).
    vector: a float feature (D,). present: feature path of a bool feature, or None; False marks the
      example's modality missing (zero inputs, modality_mask False). standardize: z-score with the
      dataset metadata's ``standardize[feature] = {"mean": [D], "std": [D]}`` (recorded by the
      builder from its train split, e.g. features3), the same for every split.
    video: a uint8 (F, H, W, C) feature, in batches uint8 (B, F, H, W, C) normalised on device as
      images are (mean, std per channel); occlusion: side of a square occluder (fraction of the
      frame side) at one random position in every frame; noise_std: Gaussian noise per pixel and
      frame (fixed per example, see mmjax.data.video).
  modality_dropout: modality name -> probability of dropping it at train time (never all of an example).
  class_weights: None, "balanced" (from the train split's label counts) or a list of C weights;
    adds "weight" (B,) float32 to batches.
  bad_examples: what to do with an undecodable image, an empty or silent audio clip or an empty
    text, found when the example is read: "missing" (default: keep the example with that
    modality missing; an example with no usable modality left is dropped), "skip" (drop the
    example: weight 0 / valid False in its batch) or "fatal" (DataError naming split, example
    index and reason). Always counted per split and reason, logged, and shown by dataset_info /
    ``experiments data info``; see mmjax.data.bad_examples.
  corruption_seed: seed of the fixed corruption (independent of the training seed).
  shuffle: shuffle train epochs (by (seed, epoch)).
  prefetch: batches prepared ahead (0: read in the caller's thread, one batch at a time).
  read_threads: 1 (default): one background thread prepares those batches; more: a Grain pool of
    that many reading threads (for storage where reads wait on I/O, not on Python).
"""
from __future__ import annotations

import os
from typing import Optional

import ml_collections

from mmjax.data.errors import DataConfigError

KINDS = ("image", "text", "audio", "vector", "video")


def _modality(**kw) -> ml_collections.ConfigDict:
    defaults = {
        "image": dict(size=None, mean=(0.5,), std=(0.5,), occlusion=0.0, noise_std=0.0, augment_pad=0, augment_flip=False),
        "text": dict(max_len=64, index=0, tokenizer=None),
        "audio": dict(length=16000, scale=32768.0, snr_db=None, augment_gain_db=0.0, augment_shift=0, augment_noise=0.0),
        "vector": dict(present=None, standardize=False),
        "video": dict(mean=(0.5,), std=(0.5,), occlusion=0.0, noise_std=0.0),
    }[kw["kind"]]
    d = dict(defaults)
    d.update(kw)
    return ml_collections.ConfigDict(d)


def base_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            name="",
            data_dir=None,
            label="label",
            label_kind="class",
            num_classes=None,
            modalities={},
            modality_dropout={},
            class_weights=None,
            bad_examples="missing",
            corruption_seed=0,
            shuffle=True,
            prefetch=2,
            read_threads=1,
        )
    )


def default_config(name: str) -> ml_collections.ConfigDict:
    """A ready data config for a known dataset; for any other tfds name the modalities are
    inferred from its features by the pipeline (images -> image, texts -> text, audio -> audio)."""
    cfg = base_config()
    cfg.name = name
    base = name.split("/")[0]
    if base == "av_digits":
        # Default difficulty: a half-side occluder plus noise on the digit and -6 dB white noise
        # on the speech of unseen voices. With multinomial logistic regression (pixels; 4x32
        # log-spectrum bands) on the full build: image 56%, audio 78%, both 88% test accuracy.
        cfg.modalities = dict(
            image=_modality(kind="image", feature="image", mean=(0.13,), std=(0.31,), occlusion=0.5, noise_std=0.3),
            audio=_modality(kind="audio", feature="audio", length=8000, snr_db=-6.0),
        )
    elif base == "av_digits_video":
        # The digit bounces behind a still occluder in heavy per-frame noise; the speech is
        # av_digits' (unseen test voices) at the same -6 dB. Measured in experiments/VIDEO_av_digits.md.
        # mean / std: of the clips as corrupted here (clean clips: 0.025 / 0.134).
        cfg.modalities = dict(
            video=_modality(kind="video", feature="video", mean=(0.09,), std=(0.145,), occlusion=0.5, noise_std=0.2),
            audio=_modality(kind="audio", feature="audio", length=8000, snr_db=-6.0),
        )
    elif base in ("mnist", "fashion_mnist", "cifar10", "cifar100", "svhn_cropped"):
        cfg.modalities = dict(image=_modality(kind="image", feature="image", augment_flip=base.startswith("cifar")))
    elif base == "coco_captions":
        cfg.label = "objects/label"
        cfg.label_kind = "multi_hot"
        cfg.modalities = dict(
            image=_modality(kind="image", feature="image", size=(224, 224)),
            text=_modality(kind="text", feature="captions/text", max_len=64),
        )
    elif base == "stamps":
        cfg.modalities = dict(
            image=_modality(kind="image", feature="image", size=(64, 64)),
            text=_modality(kind="text", feature="description", max_len=96),
            audio=_modality(kind="audio", feature="speech", length=32000),
        )
    elif base == "features3":
        # Pretrained feature vectors of the stamps (mmjax.data.builders.features3), z-scored with
        # the train split's statistics; a stamp without a recording has its audio missing.
        cfg.modalities = dict(
            audio=_modality(kind="vector", feature="audio", present="audio_present", standardize=True),
            image=_modality(kind="vector", feature="image", standardize=True),
            text=_modality(kind="vector", feature="text", standardize=True),
        )
    return cfg


def resolve_data_dir(data_dir: Optional[str]) -> str:
    """Argument > $MMJAX_DATA_DIR > ~/tensorflow_datasets."""
    return os.path.expanduser(data_dir or os.environ.get("MMJAX_DATA_DIR") or "~/tensorflow_datasets")


def validate(cfg: ml_collections.ConfigDict) -> None:
    if not cfg.get("name"):
        raise DataConfigError("data config: 'name' (a tfds dataset name) is required")
    if cfg.get("backend", "tf") != "tf" or cfg.get("export_dir"):
        raise DataConfigError("data config: 'backend' and 'export_dir' are gone: every dataset is read by index "
                              "without tensorflow (ArrayRecord); drop those keys")
    if cfg.get("bad_examples", "missing") not in ("missing", "skip", "fatal"):
        raise DataConfigError(f"data config: bad_examples must be 'missing', 'skip' or 'fatal', got {cfg.bad_examples!r}")
    for m, mc in (cfg.get("modalities") or {}).items():
        if mc.get("kind") not in KINDS:
            raise DataConfigError(f"data config: modalities.{m}.kind must be one of {KINDS}, got {mc.get('kind')!r}")
        if not mc.get("feature"):
            raise DataConfigError(f"data config: modalities.{m}.feature (a feature path) is required")
        if mc.get("tokenizer") is not None and (mc.get("kind") != "text" or not isinstance(mc.tokenizer, str)):
            raise DataConfigError(f"data config: modalities.{m}.tokenizer must be a model directory (a string) "
                                  f"on a text modality, got {mc.tokenizer!r} on kind {mc.get('kind')!r}")
        if mc.get("kind") != "vector" and (mc.get("present") or mc.get("standardize")):
            raise DataConfigError(f"data config: modalities.{m}: 'present' and 'standardize' are keys of kind 'vector'")
    for m, p in (cfg.get("modality_dropout") or {}).items():
        if m not in cfg.modalities:
            raise DataConfigError(f"data config: modality_dropout names {m!r}, not among modalities {sorted(cfg.modalities)}")
        if not 0.0 <= float(p) <= 1.0:
            raise DataConfigError(f"data config: modality_dropout.{m} must be a probability, got {p}")
