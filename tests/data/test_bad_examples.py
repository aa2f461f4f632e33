"""Bad examples (undecodable image, empty/silent audio, empty text): counted, reported,
and handled by the data config's ``bad_examples`` policy."""
import io
import logging
import os

import numpy as np
import pytest

import tensorflow_datasets as tfds

from mmjax.data import bad_examples, decode, pipeline
from mmjax.data.config import _modality, base_config
from mmjax.data.errors import DataConfigError, DataError
from mmjax.data.preprocess import tokenize_bytes

N, H, L, T = 6, 4, 16, 8
# Example 1: undecodable image; 2: all-zero clip; 3: zero-length clip; 4: empty text;
# 5: undecodable image AND empty text AND silent audio (nothing usable left).
BAD = {1: "undecodable_image", 2: "silent_audio", 3: "empty_audio", 4: "empty_text"}


def _config(data_dir, policy):
    cfg = base_config()
    cfg.name = "fake_bad"
    cfg.data_dir = str(data_dir)
    cfg.prefetch = 0
    cfg.bad_examples = policy
    cfg.modalities = dict(
        image=_modality(kind="image", feature="image", mean=(0.0,), std=(1.0,)),
        text=_modality(kind="text", feature="text", max_len=T),
        audio=_modality(kind="audio", feature="audio", length=L),
    )
    return cfg


def _columns():
    rng = np.random.default_rng(0)
    images = rng.integers(1, 255, size=(N, H, H, 1)).astype(np.uint8)
    undecodable = np.zeros(N, bool)
    undecodable[[1, 5]] = True
    images[[1, 5]] = 0  # what the source stores for bytes that failed to decode
    texts = ["one", "two", "three", "four", "", ""]
    ids, mask = tokenize_bytes(texts, T)
    text_len = np.where([len(t) == 0 for t in texts], 0, mask.sum(1)).astype(np.int32)
    audio = rng.integers(-3000, 3000, size=(N, L)).astype(np.int16)
    audio_len = np.full(N, L, np.int32)
    audio[2] = 0
    audio[3], audio_len[3] = 0, 0
    audio[5] = 1  # 1 / 32768 ~ 3e-5: below the silence threshold
    return {
        "image": images, "image__undecodable": undecodable,
        "text": ids, "text__length": text_len,
        "audio": audio, "audio__length": audio_len,
        "label": np.arange(N, dtype=np.int32) % 3, "index": np.arange(N, dtype=np.int64),
    }


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(image[..., 0]).save(out, format="PNG")
    return out.getvalue()


class FakeBad(tfds.core.GeneratorBasedBuilder):
    """The examples of ``_columns`` as a real ArrayRecord dataset (images stored as PNG bytes)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(H, H, 1), encoding_format="png"),
                "text": tfds.features.Text(),
                "audio": tfds.features.Tensor(shape=(None,), dtype=np.int16),
                "label": tfds.features.ClassLabel(names=["a", "b", "c"]),
            }),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        cols = _columns()
        texts = ["one", "two", "three", "four", "", ""]
        for i in range(N):
            png = _png(cols["image"][i])
            image = {1: png[: len(png) // 2], 5: b"not an image"}.get(i, png)  # truncated / foreign bytes
            yield i, {"image": image, "text": texts[i], "audio": cols["audio"][i, : cols["audio__length"][i]],
                      "label": int(cols["label"][i])}


def test_find_bad_reasons_match_constructed_examples():
    cfg = _config("/nonexistent", "missing")
    bad = bad_examples.find_bad(cfg, _columns())
    assert np.flatnonzero(bad["image"]["undecodable_image"]).tolist() == [1, 5]
    assert np.flatnonzero(bad["audio"]["silent_audio"]).tolist() == [2, 5]
    assert np.flatnonzero(bad["audio"]["empty_audio"]).tolist() == [3]
    assert np.flatnonzero(bad["text"]["empty_text"]).tolist() == [4, 5]


def test_quiet_but_real_audio_is_not_silent():
    cfg = _config("/nonexistent", "missing")
    cols = _columns()
    cols["audio"][2] = 0
    cols["audio"][2, 7] = 8  # 8 / 32768 ~ 2.4e-4 > threshold: a quiet clip, not silence
    assert np.flatnonzero(bad_examples.find_bad(cfg, cols)["audio"]["silent_audio"]).tolist() == [5]


def test_skip_drops_bad_examples_and_counts(caplog):
    cfg = _config("/nonexistent", "skip")
    bad_examples.reset("fake_bad")
    with caplog.at_level(logging.INFO, logger="mmjax.data"):
        cols, keep = bad_examples.apply(cfg, "train", _columns())
    assert keep.tolist() == [True] + [False] * 5  # rows stay (weight 0 / valid False downstream)
    r = bad_examples.REPORTS[("fake_bad", "train")]
    assert (r["undecodable_image"], r["silent_audio"], r["empty_audio"], r["empty_text"]) == (2, 2, 1, 2)
    assert (r["examples"], r["kept"]) == (6, 1)
    # Reading the same examples again counts distinct examples, not reads.
    bad_examples.apply(cfg, "train", {k: v[[1, 2, 0]] for k, v in _columns().items()})
    assert bad_examples.REPORTS[("fake_bad", "train")] == r
    line = bad_examples.summary_line("fake_bad", "train")
    assert "undecodable_image 2" in line and "empty_text 2" in line and "1 examples kept" in line
    warned = [rec.getMessage() for rec in caplog.records if rec.levelno == logging.WARNING]
    assert any("undecodable image (example 1" in w for w in warned) and len(warned) == 4  # once per reason


def test_fatal_names_split_index_and_reason():
    cfg = _config("/nonexistent", "fatal")
    with pytest.raises(DataError, match=r"split 'train': example 1 has undecodable image \(modality 'image'\); 5 bad"):
        bad_examples.apply(cfg, "train", _columns())
    cols = _columns()
    keep = np.array([0, 2, 3])
    cols = {k: v[keep] for k, v in cols.items()}  # index keeps the original positions 0, 2, 3
    with pytest.raises(DataError, match=r"example 2 has silent audio \(modality 'audio'\)"):
        bad_examples.apply(cfg, "train", cols)
    assert issubclass(DataError, ValueError)


def test_clean_split_passes_unchanged():
    cfg = _config("/nonexistent", "fatal")
    cols = {k: v[[0]] for k, v in _columns().items()}
    out, keep = bad_examples.apply(cfg, "clean", cols)
    assert keep.tolist() == [True]
    for k in cols:
        np.testing.assert_array_equal(out[k], cols[k])
    assert "no bad examples" in bad_examples.summary_line("fake_bad", "clean")


def test_unknown_policy_is_a_config_error():
    cfg = _config("/nonexistent", "ignore")
    with pytest.raises(DataConfigError, match="bad_examples"):
        bad_examples.apply(cfg, "train", _columns())


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A data_dir with fake_bad built (ArrayRecord)."""
    pytest.importorskip("tensorflow")
    tmp = tmp_path_factory.mktemp("fake_bad")
    FakeBad(data_dir=str(tmp), file_format="array_record").download_and_prepare()
    return str(tmp)


def _eval_batches(cfg):
    bad_examples.reset(cfg.name)
    return list(pipeline.make_iterator(cfg, "train", global_batch_size=2, seed=0, train=False, process_index=0, process_count=1))


def test_missing_through_make_iterator(exported):
    cfg = _config(exported, "missing")
    batches = _eval_batches(cfg)
    valid = np.concatenate([b["valid"] for b in batches])
    mm = {m: np.concatenate([b["modality_mask"][m] for b in batches])[valid] for m in ("image", "text", "audio")}
    # Example 5 has no usable modality left: skipped; the others are kept with the bad modality missing.
    assert valid.sum() == 5
    assert mm["image"].tolist() == [True, False, True, True, True]
    assert mm["audio"].tolist() == [True, True, False, False, True]
    assert mm["text"].tolist() == [True, True, True, True, False]
    labels = np.concatenate([b["label"] for b in batches])[valid]
    assert labels.tolist() == [0, 1, 2, 0, 1]
    audio = np.concatenate([b["inputs"]["audio"] for b in batches])[valid]
    tm = np.concatenate([b["token_mask"]["audio"] for b in batches])[valid]
    assert not audio[2].any() and not tm[2].any()  # silent clip: zero inputs, no real samples
    np.testing.assert_array_equal(batches[0]["inputs"]["image"][0], _columns()["image"][0])  # uint8, as stored
    assert not batches[0]["inputs"]["image"][1].any()  # the undecodable one
    info = pipeline.dataset_info(cfg)
    rep = info.bad_examples["train"]
    assert (rep["undecodable_image"], rep["no_modality_left"], rep["kept"], rep["policy"]) == (2, 1, 5, "missing")


def test_skip_and_fatal_through_make_iterator(exported):
    batches = _eval_batches(_config(exported, "skip"))
    assert sum(int(b["valid"].sum()) for b in batches) == 1
    with pytest.raises(DataError, match="example 1 has undecodable image"):
        _eval_batches(_config(exported, "fatal"))


def test_truncated_png_is_undecodable():
    rng = np.random.default_rng(1)
    good = rng.integers(0, 256, size=(5, 5, 1)).astype(np.uint8)
    png = _png(good)
    assert np.array_equal(decode.decode_image(png, (5, 5, 1), None), good)  # PNG is lossless
    assert decode.decode_image(png[: len(png) // 2], (5, 5, 1), None) is None
    assert decode.decode_image(b"not an image", (5, 5, 1), None) is None
    assert decode.decode_image(png, (4, 4, 1), None) is None  # another size than the feature's
    assert decode.decode_image(png, (None, None, 1), (3, 3)).shape == (3, 3, 1)
