"""Bad examples (undecodable image, empty/silent audio, empty text): counted, reported,
and handled by the data config's ``bad_examples`` policy."""
import io
import json
import logging
import os

import numpy as np
import pytest

from mmjax.data import bad_examples, pipeline, source
from mmjax.data.config import _modality, base_config
from mmjax.data.errors import DataConfigError, DataError
from mmjax.data.preprocess import tokenize_bytes

N, H, L, T = 6, 4, 16, 8
# Example 1: undecodable image; 2: all-zero clip; 3: zero-length clip; 4: empty text;
# 5: undecodable image AND empty text AND silent audio (nothing usable left).
BAD = {1: "undecodable_image", 2: "silent_audio", 3: "empty_audio", 4: "empty_text"}


def _config(tmp_path, policy):
    cfg = base_config()
    cfg.name = "fake_bad"
    cfg.backend = "numpy"
    cfg.export_dir = str(tmp_path)
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


def _export(cfg, cols):
    path, info_path = source._export_paths(cfg, "train")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.savez(path, **cols)
    info = source.DatasetInfo(
        name=cfg.name, num_classes=3, class_names=["a", "b", "c"],
        modalities={"image": source.ModalityInfo("image", (H, H, 1), "float32", False),
                    "text": source.ModalityInfo("text", (T,), "int32", True),
                    "audio": source.ModalityInfo("audio", (L,), "float32", True)},
        splits={"train": N}, hashes={},
    )
    with open(info_path, "w") as f:
        json.dump(info.to_json(), f)


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
    with caplog.at_level(logging.INFO, logger="mmjax.data"):
        cols = bad_examples.apply(cfg, "train", _columns())
    assert cols["index"].tolist() == [0]
    assert cols["label"].tolist() == [0]
    r = bad_examples.REPORTS[("fake_bad", "train")]
    assert (r["undecodable_image"], r["silent_audio"], r["empty_audio"], r["empty_text"]) == (2, 2, 1, 2)
    assert (r["examples"], r["kept"]) == (6, 1)
    line = bad_examples.summary_line("fake_bad", "train")
    assert "undecodable_image 2" in line and "empty_text 2" in line and "1 examples kept" in line
    assert any(line == rec.getMessage() and rec.levelno == logging.WARNING for rec in caplog.records)


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
    out = bad_examples.apply(cfg, "clean", cols)
    for k in cols:
        np.testing.assert_array_equal(out[k], cols[k])
    assert "no bad examples" in bad_examples.summary_line("fake_bad", "clean")


def test_unknown_policy_is_a_config_error():
    cfg = _config("/nonexistent", "ignore")
    with pytest.raises(DataConfigError, match="bad_examples"):
        bad_examples.apply(cfg, "train", _columns())


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    _export(_config(str(tmp), "missing"), _columns())
    return str(tmp)


def _eval_batches(cfg):
    pipeline.clear_cache()
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
    expected = _columns()["image"][0].astype(np.float32) / 255.0
    np.testing.assert_allclose(batches[0]["inputs"]["image"][0], expected, rtol=1e-6)
    info = pipeline.dataset_info(cfg)
    rep = info.bad_examples["train"]
    assert (rep["undecodable_image"], rep["no_modality_left"], rep["kept"], rep["policy"]) == (2, 1, 5, "missing")


def test_skip_and_fatal_through_make_iterator(exported):
    batches = _eval_batches(_config(exported, "skip"))
    assert sum(int(b["valid"].sum()) for b in batches) == 1
    with pytest.raises(DataError, match="example 1 has undecodable image"):
        _eval_batches(_config(exported, "fatal"))


def test_truncated_png_is_undecodable_on_host():
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(1)
    good = rng.integers(0, 256, size=(5, 5, 3)).astype(np.uint8)
    png = tf.io.encode_png(good).numpy()
    encoded = np.array([png, png[: len(png) // 2], b"not an image"], dtype=object)
    images, bad = source.decode_images_host(encoded, (5, 5, 3), resize=False)
    assert bad.tolist() == [False, True, True]
    np.testing.assert_array_equal(images[0], good)  # PNG is lossless
    assert not images[1:].any()
