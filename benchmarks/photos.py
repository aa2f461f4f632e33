"""A JPEG image dataset of any size for the input benchmark, and its augmentation.

``mmjax_bench_photos`` is a tfds builder (ArrayRecord files) whose examples are
224x224x3 JPEGs cut from the real photographs that ship inside scikit-image
(``skimage.data``: astronaut, coffee, chelsea, rocket, ...). Example ``i`` is a
deterministic random crop (scale, aspect ratio, position), a flip and a small
brightness change of photograph ``i % 8``, whose index is the label; so the
examples differ from each other while nothing is downloaded. Each size is its
own builder config, ``n<N>`` (``mmjax_bench_photos/n2000``), built once into a
cache directory by :func:`build` and reused.

:func:`random_resized_crop_flip` is the train augmentation the Grain and plain
PIL pipelines of ``benchmarks/input_bench.py`` apply after decoding (the
Inception-style crop: area 8-100 %, aspect ratio 3/4-4/3, resized to 224x224,
then a horizontal flip with probability 1/2).
"""
from __future__ import annotations

import dataclasses
import io
import os
import time
from typing import Dict

import numpy as np

NAME = "mmjax_bench_photos"
SIZE = 224
# Photographs bundled in the scikit-image wheel (no download); grayscale ones become RGB.
SOURCES = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "retina",
           "hubble_deep_field", "camera")
JPEG_QUALITY = 90


def source_photos() -> Dict[str, np.ndarray]:
    """name -> (H, W, 3) uint8 photograph from ``skimage.data``."""
    import skimage.data

    out = {}
    for name in SOURCES:
        x = np.asarray(getattr(skimage.data, name)())
        if x.ndim == 2:
            x = np.stack([x] * 3, -1)
        out[name] = np.ascontiguousarray(x[..., :3].astype(np.uint8))
    return out


def make_example(photo: np.ndarray, rng: np.random.Generator) -> bytes:
    """A 224x224 JPEG: random crop (side 25-100 % of the short side, aspect 3/4-4/3), flip, brightness."""
    from PIL import Image

    h, w = photo.shape[:2]
    side = rng.uniform(0.25, 1.0) * min(h, w)
    ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    ch, cw = min(h, int(side / np.sqrt(ratio))), min(w, int(side * np.sqrt(ratio)))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    img = Image.fromarray(photo).resize((SIZE, SIZE), Image.BILINEAR, box=(x, y, x + cw, y + ch))
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    arr = np.asarray(img, np.float32) * rng.uniform(0.8, 1.2)
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def random_resized_crop_flip(jpeg: bytes, rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """Decodes JPEG bytes with PIL, random resized crop to (size, size), random flip: (size, size, 3) uint8."""
    from PIL import Image

    img = Image.open(io.BytesIO(jpeg))
    img = img.convert("RGB") if img.mode != "RGB" else img
    w, h = img.size
    box = (0, 0, w, h)
    for _ in range(10):
        area = rng.uniform(0.08, 1.0) * w * h
        ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw, ch = int(round(np.sqrt(area * ratio))), int(round(np.sqrt(area / ratio)))
        if 0 < cw <= w and 0 < ch <= h:
            x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            box = (x, y, x + cw, y + ch)
            break
    img = img.resize((size, size), Image.BILINEAR, box=box)
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(img)


def _builder_class():
    """The tfds builder class (defined on first use: importing this module needs no tensorflow_datasets)."""
    global _BUILDER
    if _BUILDER is not None:
        return _BUILDER
    import tensorflow_datasets as tfds

    @dataclasses.dataclass
    class PhotosConfig(tfds.core.BuilderConfig):
        num_examples: int = 2000
        seed: int = 0

    class MmjaxBenchPhotos(tfds.core.GeneratorBasedBuilder):
        """224x224 JPEG crops of scikit-image's bundled photographs; label = source photograph."""

        VERSION = tfds.core.Version("1.0.0")
        RELEASE_NOTES = {"1.0.0": "First release."}
        BUILDER_CONFIGS: list = []  # one config per size, made by build()

        def _info(self):
            return self.dataset_info_from_configs(
                description="Random crops of scikit-image's sample photographs, for input-pipeline benchmarks.",
                features=tfds.features.FeaturesDict({
                    "image": tfds.features.Image(shape=(SIZE, SIZE, 3), encoding_format="jpeg"),
                    "label": tfds.features.ClassLabel(names=list(SOURCES)),
                    "id": np.int32,
                }),
                disable_shuffling=True,
            )

        def _split_generators(self, dl_manager):
            del dl_manager  # nothing is downloaded
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            photos = [p for _, p in sorted(source_photos().items(), key=lambda kv: SOURCES.index(kv[0]))]
            cfg = self.builder_config
            for i in range(cfg.num_examples):
                rng = np.random.default_rng([cfg.seed, i])
                label = i % len(photos)
                yield i, {"image": make_example(photos[label], rng), "label": label, "id": i}

    _BUILDER = (MmjaxBenchPhotos, PhotosConfig)
    return _BUILDER


_BUILDER = None


def config_name(num_examples: int) -> str:
    """The tfds name of the ``num_examples`` build, e.g. ``mmjax_bench_photos/n2000``."""
    return f"{NAME}/n{int(num_examples)}"


def dataset_dir(data_dir: str, num_examples: int) -> str:
    """Where the build of ``num_examples`` lives under ``data_dir``."""
    return os.path.join(data_dir, NAME, f"n{int(num_examples)}", "1.0.0")


def build(data_dir: str, num_examples: int, *, log=None) -> Dict[str, object]:
    """Builds ``mmjax_bench_photos/n<num_examples>`` into ``data_dir`` unless it is there.

    Returns {"name", "dir", "num_examples", "build_s" (None when reused),
    "built_in_s" (the build's time, also when reused), "bytes"}.
    """
    import json

    if num_examples < 1:
        raise ValueError(f"num_examples must be >= 1, got {num_examples}")
    path = dataset_dir(data_dir, num_examples)
    record = os.path.join(data_dir, NAME, f"n{int(num_examples)}.build.json")
    build_s = None
    if not os.path.exists(os.path.join(path, "dataset_info.json")):
        import tensorflow_datasets as tfds

        cls, cfg_cls = _builder_class()
        tfds.disable_progress_bar()
        if log:
            log(f"building {config_name(num_examples)} into {data_dir} ...")
        t = time.perf_counter()
        b = cls(config=cfg_cls(name=f"n{int(num_examples)}", num_examples=int(num_examples)),
                data_dir=data_dir, file_format="array_record")
        b.download_and_prepare(download_config=tfds.download.DownloadConfig(
            download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS))
        build_s = time.perf_counter() - t
        with open(record, "w") as f:
            json.dump({"build_s": build_s, "cpu_count": os.cpu_count()}, f)
    built_in_s = build_s
    if built_in_s is None and os.path.exists(record):
        with open(record) as f:
            built_in_s = json.load(f)["build_s"]
    size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
    return {"name": config_name(num_examples), "dir": path, "num_examples": int(num_examples),
            "build_s": build_s, "built_in_s": built_in_s, "bytes": size}


def data_source(directory: str, split: str = "train"):
    """The tfds ArrayRecord data source of a build (its :func:`dataset_dir`), images left as JPEG bytes."""
    import tensorflow_datasets as tfds

    b = tfds.builder_from_directory(directory)
    return b.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})
