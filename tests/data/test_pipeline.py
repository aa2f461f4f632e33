"""make_iterator on av_digits/tiny: format, masks, order, resume, sharding, dropout, backends."""
import numpy as np
import pytest

from mmjax.data import DataConfigError, dataset_info, make_iterator, split_columns


def _take(it, n):
    return [next(it) for _ in range(n)]


def _eq(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_eq(a[k], b[k]) for k in a)
    return np.array_equal(a, b)


def test_info_and_batch_format(tiny_config):
    info = dataset_info(tiny_config)
    assert info.num_classes == 10 and info.splits == {"train": 70, "validation": 10, "test": 20}
    assert info.modalities["image"].shape == (28, 28, 1) and info.modalities["audio"].shape == (8000,)
    assert set(info.hashes) == {"train", "validation", "test"}
    b = next(make_iterator(tiny_config, "train", global_batch_size=8, seed=0, train=True, process_index=0, process_count=1))
    assert b["inputs"]["image"].shape == (8, 28, 28, 1) and b["inputs"]["image"].dtype == np.float32
    assert b["inputs"]["audio"].shape == (8, 8000) and b["inputs"]["audio"].dtype == np.float32
    assert b["token_mask"].keys() == {"audio"} and b["token_mask"]["audio"].dtype == bool
    assert b["label"].shape == (8,) and b["label"].dtype == np.int32
    assert all(b["modality_mask"][m].all() for m in ("image", "audio"))
    # Audio is zero outside its mask and the mask is a prefix of real samples.
    tm = b["token_mask"]["audio"]
    assert not np.any(b["inputs"]["audio"][~tm])
    assert np.array_equal(tm, np.arange(8000)[None] < tm.sum(1)[:, None])


def test_fixed_corruption_snr_and_occlusion(tiny_config):
    cols = split_columns(tiny_config, "test")
    clean_cfg = tiny_config.copy_and_resolve_references()
    clean_cfg.modalities.audio.snr_db = None
    clean_cfg.modalities.image.occlusion = 0.0
    clean_cfg.modalities.image.noise_std = 0.0
    clean = split_columns(clean_cfg, "test")
    mask = np.arange(8000)[None] < cols["audio__length"][:, None]
    noise = np.where(mask, cols["audio"] - clean["audio"], 0)
    snr = 10 * np.log10((clean["audio"] ** 2).sum(1) / (noise**2).sum(1))
    assert np.allclose(snr, 0.0, atol=1.0)  # default 0 dB, white noise over the valid part
    # Half-side occluder: at least a quarter of the pixels are exactly 0.
    assert ((cols["image"] == 0).mean(axis=(1, 2, 3)) >= 0.25).all()
    assert not np.array_equal(cols["image"], clean["image"])
    # Fixed per example: a second load gives the same corruption.
    assert np.array_equal(split_columns(tiny_config, "test")["audio"], cols["audio"])


def test_resume_matches_uninterrupted(tiny_config):
    kw = dict(global_batch_size=16, seed=3, train=True, process_index=0, process_count=1)
    tiny_config.modalities.image.augment_pad = 2
    tiny_config.modality_dropout = {"image": 0.3}
    full = _take(make_iterator(tiny_config, "train", **kw), 7)  # 4 steps per epoch: crosses 1 epoch
    resumed = _take(make_iterator(tiny_config, "train", start_step=5, **kw), 2)
    assert _eq(full[5], resumed[0]) and _eq(full[6], resumed[1])
    other_seed = next(make_iterator(tiny_config, "train", **{**kw, "seed": 4}))
    assert not _eq(full[0]["label"], other_seed["label"]) or not _eq(full[0]["inputs"], other_seed["inputs"])
    # Each epoch visits distinct examples: the 4 batches of epoch 0 have 64 distinct images.
    tiny_config.modalities.image.augment_pad = 0
    tiny_config.modality_dropout = {}
    plain = _take(make_iterator(tiny_config, "train", **kw), 4)
    imgs = np.concatenate([b["inputs"]["image"] for b in plain]).reshape(64, -1)
    assert len({r.tobytes() for r in imgs}) == 64


def test_two_processes_disjoint_and_covering(tiny_config):
    kw = dict(global_batch_size=8, seed=0)
    one = list(make_iterator(tiny_config, "test", train=False, process_index=0, process_count=1, **kw))
    parts = [list(make_iterator(tiny_config, "test", train=False, process_index=p, process_count=2, **kw)) for p in (0, 1)]
    assert len(one) == 3 and all(len(p) == 3 for p in parts)
    for step in range(3):
        for key in ("label", "valid"):
            assert np.array_equal(one[step][key], np.concatenate([parts[0][step][key], parts[1][step][key]]))
    valid = np.concatenate([b["valid"] for b in one])
    assert valid.sum() == 20 and not valid[20:].any()
    # Train: the two halves of every global batch, augmentation included, equal the 1-process batch.
    tiny_config.modalities.image.augment_pad = 2
    t1 = next(make_iterator(tiny_config, "train", train=True, process_index=0, process_count=1, **kw))
    t2 = [next(make_iterator(tiny_config, "train", train=True, process_index=p, process_count=2, **kw)) for p in (0, 1)]
    assert np.array_equal(t1["inputs"]["image"], np.concatenate([t["inputs"]["image"] for t in t2]))
    with pytest.raises(DataConfigError, match="multiple of the process count"):
        make_iterator(tiny_config, "test", global_batch_size=9, seed=0, train=False, process_index=0, process_count=2)


def test_modality_dropout_never_drops_everything(tiny_config):
    tiny_config.modality_dropout = {"image": 0.5, "audio": 0.5}
    it = make_iterator(tiny_config, "train", global_batch_size=64, seed=0, train=True, process_index=0, process_count=1)
    img, aud = [], []
    for b in _take(it, 4):
        mi, ma = b["modality_mask"]["image"], b["modality_mask"]["audio"]
        assert (mi | ma).all()
        assert not b["inputs"]["image"][~mi].any() and not b["inputs"]["audio"][~ma].any()
        img.append(mi)
        aud.append(ma)
    # P(dropped) = p * (1 - p/2 ... ) : with both at 0.5, each is dropped w.p. 0.5 - 0.25/2 = 0.375.
    drop = 1 - np.concatenate(img).mean()
    assert 0.25 < drop < 0.5
    eval_b = next(make_iterator(tiny_config, "test", global_batch_size=8, seed=0, train=False, process_index=0, process_count=1))
    assert eval_b["modality_mask"]["image"].all() and eval_b["modality_mask"]["audio"].all()


def test_class_weights_explicit(tiny_config):
    tiny_config.class_weights = [float(i) for i in range(10)]
    b = next(make_iterator(tiny_config, "test", global_batch_size=8, seed=0, train=False, process_index=0, process_count=1))
    assert np.array_equal(b["weight"], b["label"].astype(np.float32))


def test_class_weights_balanced_on_balanced_split(tiny_config):
    tiny_config.class_weights = "balanced"
    b = next(make_iterator(tiny_config, "test", global_batch_size=8, seed=0, train=False, process_index=0, process_count=1))
    assert np.allclose(b["weight"], 1.0)  # the train split is balanced: N / (C * N / C) = 1


def test_numpy_backend_matches_tf(tiny_config, tmp_path):
    from mmjax.data import export

    tiny_config.export_dir = str(tmp_path)
    tiny_config.modalities.image.augment_pad = 2
    tiny_config.modality_dropout = {"audio": 0.5}
    export(tiny_config, ["train"])
    kw = dict(global_batch_size=16, seed=1, train=True, process_index=0, process_count=1)
    tf_batches = _take(make_iterator(tiny_config, "train", **kw), 3)
    np_cfg = tiny_config.copy_and_resolve_references()
    np_cfg.backend = "numpy"
    np_batches = _take(make_iterator(np_cfg, "train", **kw), 3)
    assert all(_eq(a, b) for a, b in zip(tf_batches, np_batches))
    assert dataset_info(np_cfg).hashes == dataset_info(tiny_config).hashes
    np_cfg.name = "av_digits/nonexistent"
    with pytest.raises(DataConfigError, match="data export"):
        next(make_iterator(np_cfg, "train", **kw))
