"""Public tfds datasets through the same pipeline, offline with tfds.testing.mock_data."""
import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from mmjax.data import dataset_info, default_config, make_iterator  # noqa: E402
from mmjax.data.normalize import normalize_images  # noqa: E402


def _it(cfg, split, train, bs=4):
    return make_iterator(cfg, split, global_batch_size=bs, seed=0, train=train, process_index=0, process_count=1)


def test_cifar10_mock(tmp_path):
    cfg = default_config("cifar10")
    cfg.data_dir = str(tmp_path)
    cfg.prefetch = 0
    with tfds.testing.mock_data(num_examples=12):
        info = dataset_info(cfg)
        assert info.num_classes == 10 and len(info.class_names) == 10  # mock_data has no label names file
        assert info.modalities["image"].shape == (32, 32, 3)
        b = next(_it(cfg, "train", True))
    assert b["inputs"]["image"].shape == (4, 32, 32, 3) and b["inputs"]["image"].dtype == np.uint8
    x = normalize_images(b, info.image_norms)["inputs"]["image"]
    assert x.dtype == np.float32 and x.min() >= -1.0 and x.max() <= 1.0  # mean 0.5, std 0.5
    assert b["label"].dtype == np.int32 and ((0 <= b["label"]) & (b["label"] < 10)).all()
    assert "token_mask" not in b


def test_coco_captions_mock(tmp_path):
    cfg = default_config("coco_captions")
    cfg.data_dir = str(tmp_path)
    cfg.prefetch = 0
    cfg.modalities.image.size = (32, 32)
    cfg.modalities.text.max_len = 16
    with tfds.testing.mock_data(num_examples=6):
        info = dataset_info(cfg)
        assert info.num_classes == 80 and info.label_kind == "multi_hot"
        builder = tfds.builder("coco_captions", data_dir=str(tmp_path))
        first = next(iter(builder.as_dataset(split="val").take(1).as_numpy_iterator()))
        batches = list(_it(cfg, "val", False, bs=4))
    b = batches[0]
    assert b["inputs"]["image"].shape == (4, 32, 32, 3)
    assert b["inputs"]["text"].shape == (4, 16) and b["inputs"]["text"].dtype == np.int32
    assert np.array_equal(b["token_mask"]["text"], b["inputs"]["text"] != 0)
    assert b["label"].shape == (4, 80) and b["label"].dtype == np.float32
    # The first caption of the first example, byte-tokenised, and its object labels as multi-hot.
    caption = first["captions"]["text"][0] if len(first["captions"]["text"]) else b""
    # mmjax.tokenizer.ByteTokenizer: bos 2, byte b -> b + 4, eos 3 (kept last when truncated).
    expected = [2] + [c + 4 for c in caption] + [3]
    if len(expected) > 16:
        expected = expected[:15] + [3]
    assert b["inputs"]["text"][0][: len(expected)].tolist() == expected
    assert set(np.nonzero(b["label"][0])[0]) == set(first["objects"]["label"].tolist())
    assert len(batches) == 2 and batches[1]["valid"].tolist() == [True, True, False, False]


def test_unknown_dataset_names_itself(tmp_path):
    from mmjax.data import DataConfigError

    cfg = default_config("no_such_dataset_xyz")
    cfg.data_dir = str(tmp_path)
    with pytest.raises(DataConfigError, match="no_such_dataset_xyz"):
        dataset_info(cfg)
