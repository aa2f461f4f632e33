"""make_iterator on av_digits/tiny: format, order, per-example draws, resume, processes, Grain threads."""
import numpy as np
import pytest

from mmjax.data import DataConfigError, dataset_info, make_iterator, split_columns
from mmjax.data import pipeline, source


def _take(it, n):
    return [next(it) for _ in range(n)]


def _eq(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_eq(a[k], b[k]) for k in a)
    return np.array_equal(a, b)


def _cat(parts):
    """Rows of several processes' batches, concatenated in process order."""
    if isinstance(parts[0], dict):
        return {k: _cat([p[k] for p in parts]) for k in parts[0]}
    return np.concatenate(parts)


def test_info_and_batch_format(tiny_config):
    info = dataset_info(tiny_config)
    assert info.num_classes == 10 and info.splits == {"train": 70, "validation": 10, "test": 20}
    assert info.modalities["image"].shape == (28, 28, 1) and info.modalities["audio"].shape == (8000,)
    assert set(info.hashes) == {"train", "validation", "test"}
    assert info.sample_rate == 8000 and info.data_dir.startswith(tiny_config.data_dir)
    b = next(make_iterator(tiny_config, "train", global_batch_size=8, seed=0, train=True, process_index=0, process_count=1))
    assert b["inputs"]["image"].shape == (8, 28, 28, 1) and b["inputs"]["image"].dtype == np.uint8
    assert b["inputs"]["audio"].shape == (8, 8000) and b["inputs"]["audio"].dtype == np.float32
    assert b["token_mask"].keys() == {"audio"} and b["token_mask"]["audio"].dtype == bool
    assert b["label"].shape == (8,) and b["label"].dtype == np.int32
    assert b["weight"].tolist() == [1.0] * 8  # no class weights, nothing dropped
    assert all(b["modality_mask"][m].all() for m in ("image", "audio"))
    # Audio is zero outside its mask and the mask is a prefix of real samples.
    tm = b["token_mask"]["audio"]
    assert not np.any(b["inputs"]["audio"][~tm])
    assert np.array_equal(tm, np.arange(8000)[None] < tm.sum(1)[:, None])


def test_order_and_labels_follow_the_epoch_permutation(tiny_config):
    labels = split_columns(tiny_config, "train")["label"]
    it = make_iterator(tiny_config, "train", global_batch_size=16, seed=3, train=True, process_index=0, process_count=1)
    for step, b in enumerate(_take(it, 9)):  # 4 steps per epoch: crosses two epoch boundaries
        epoch, k = divmod(step, 4)
        perm = np.random.default_rng([3, epoch]).permutation(70)
        assert b["label"].tolist() == labels[perm[k * 16 : (k + 1) * 16]].tolist()
    ev = list(make_iterator(tiny_config, "test", global_batch_size=8, seed=0, train=False, process_index=0, process_count=1))
    test_labels = split_columns(tiny_config, "test")["label"]
    assert np.concatenate([b["label"] for b in ev])[:20].tolist() == test_labels.tolist()


def test_fixed_corruption_snr_occlusion_and_keyed_by_example(tiny_config):
    cols = split_columns(tiny_config, "test")
    clean_cfg = tiny_config.copy_and_resolve_references()
    clean_cfg.modalities.audio.snr_db = None
    clean_cfg.modalities.image.occlusion = 0.0
    clean_cfg.modalities.image.noise_std = 0.0
    clean = split_columns(clean_cfg, "test")
    mask = np.arange(8000)[None] < cols["audio__length"][:, None]
    noise = np.where(mask, cols["audio"] - clean["audio"], 0)
    snr = 10 * np.log10((clean["audio"] ** 2).sum(1) / (noise**2).sum(1))
    assert np.allclose(snr, -6.0, atol=1.0)  # default -6 dB, white noise over the valid part
    # Half-side occluder: at least a quarter of the pixels are exactly 0.
    assert ((cols["image"] == 0).mean(axis=(1, 2, 3)) >= 0.25).all()
    assert not np.array_equal(cols["image"], clean["image"])
    # The corruption belongs to the example: read alone, in another order, it is the same.
    cfg = pipeline._prepared_config(tiny_config)
    reader = source.SplitReader(cfg, "test")
    alone = pipeline.corrupt(cfg, "test", reader.read([7, 2]))
    assert np.array_equal(alone["image"], cols["image"][[7, 2]]) and np.array_equal(alone["audio"], cols["audio"][[7, 2]])
    # ... and depends on the split and the corruption seed.
    other = tiny_config.copy_and_resolve_references()
    other.corruption_seed = 1
    assert not np.array_equal(split_columns(other, "test")["image"], cols["image"])


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


@pytest.mark.parametrize("count", [2, 4])
def test_processes_read_disjoint_rows_that_make_the_global_batch(tiny_config, count, monkeypatch):
    tiny_config.modalities.image.augment_pad = 2
    tiny_config.modalities.image.augment_flip = True
    tiny_config.modalities.audio.augment_gain_db = 6.0
    tiny_config.modalities.audio.augment_noise = 0.01
    tiny_config.modality_dropout = {"image": 0.3, "audio": 0.3}
    read = {}
    real_read = source.SplitReader.read

    def spy(self, indices):
        read.setdefault(self._process, []).extend(int(i) for i in indices)
        return real_read(self, indices)

    monkeypatch.setattr(source.SplitReader, "read", spy)

    def run(p, n, split, train):
        monkeypatch.setattr(source.SplitReader, "_process", p, raising=False)
        return _take(make_iterator(tiny_config, split, global_batch_size=8, seed=5, train=train,
                                   process_index=p, process_count=n), 3)

    one = run(0, 1, "train", True)
    one_rows = list(read.pop(0))
    parts = [run(p, count, "train", True) for p in range(count)]
    rows = [list(read[p]) for p in range(count)]
    for step in range(3):  # augmentation and dropout included: the same rows, bit for bit
        assert _eq(one[step], _cat([parts[p][step] for p in range(count)]))
    # A run resumed at step 1 with this many processes continues the 1-process run exactly.
    resumed = [_take(make_iterator(tiny_config, "train", global_batch_size=8, seed=5, train=True, start_step=1,
                                   process_index=p, process_count=count), 2) for p in range(count)]
    assert all(_eq(one[1 + k], _cat([resumed[p][k] for p in range(count)])) for k in range(2))
    assert all(not set(rows[p]) & set(rows[q]) for p in range(count) for q in range(p + 1, count))
    per = 8 // count
    merged = [r for step in range(3) for p in range(count) for r in rows[p][step * per : (step + 1) * per]]
    assert merged == one_rows  # each process read only its rows; together the global batches
    ev_one = list(make_iterator(tiny_config, "test", global_batch_size=8, seed=0, train=False, process_index=0, process_count=1))
    ev = [list(make_iterator(tiny_config, "test", global_batch_size=8, seed=0, train=False, process_index=p,
                             process_count=count)) for p in range(count)]
    assert len(ev_one) == 3 and all(len(e) == 3 for e in ev)
    for step in range(3):
        assert _eq(ev_one[step], _cat([ev[p][step] for p in range(count)]))
    assert np.concatenate([b["valid"] for b in ev_one]).sum() == 20
    with pytest.raises(DataConfigError, match="multiple of the process count"):
        make_iterator(tiny_config, "test", global_batch_size=9, seed=0, train=False, process_index=0, process_count=2)


def test_grain_threads_give_the_sequential_batches(tiny_config):
    tiny_config.modalities.image.augment_pad = 2
    tiny_config.modality_dropout = {"audio": 0.5}
    kw = dict(global_batch_size=16, seed=1, train=True, process_index=0, process_count=1, start_step=2)
    plain = _take(make_iterator(tiny_config, "train", **kw), 5)
    for threads in (1, 2):  # the background thread and Grain's read pool
        threaded_cfg = tiny_config.copy_and_resolve_references()
        threaded_cfg.prefetch, threaded_cfg.read_threads = 3, threads
        threaded = _take(make_iterator(threaded_cfg, "train", **kw), 5)
        assert all(_eq(a, b) for a, b in zip(plain, threaded)), threads


def test_modality_dropout_never_drops_everything(tiny_config):
    tiny_config.modality_dropout = {"image": 0.5, "audio": 0.5}
    it = make_iterator(tiny_config, "train", global_batch_size=64, seed=0, train=True, process_index=0, process_count=1)
    img = []
    for b in _take(it, 4):
        mi, ma = b["modality_mask"]["image"], b["modality_mask"]["audio"]
        assert (mi | ma).all()
        assert not b["inputs"]["image"][~mi].any() and not b["inputs"]["audio"][~ma].any()
        img.append(mi)
    # P(dropped) = p * (1 - p/2 ... ) : with both at 0.5, each is dropped w.p. 0.5 - 0.25/2 = 0.375.
    drop = 1 - np.concatenate(img).mean()
    assert 0.25 < drop < 0.5
    eval_b = next(make_iterator(tiny_config, "test", global_batch_size=8, seed=0, train=False, process_index=0, process_count=1))
    assert eval_b["modality_mask"]["image"].all() and eval_b["modality_mask"]["audio"].all()


def test_class_weights_explicit_and_balanced(tiny_config):
    balanced = tiny_config.copy_and_resolve_references()
    tiny_config.class_weights = [float(i) for i in range(10)]
    b = next(make_iterator(tiny_config, "test", global_batch_size=8, seed=0, train=False, process_index=0, process_count=1))
    assert np.array_equal(b["weight"], b["label"].astype(np.float32))
    balanced.class_weights = "balanced"
    b = next(make_iterator(balanced, "test", global_batch_size=8, seed=0, train=False, process_index=0, process_count=1))
    assert np.allclose(b["weight"], 1.0)  # the train split is balanced: N / (C * N / C) = 1


def test_removed_numpy_backend_is_a_clear_error(tiny_config):
    tiny_config.backend = "numpy"
    with pytest.raises(DataConfigError, match="'backend' and 'export_dir' are gone"):
        dataset_info(tiny_config)
