"""Numpy preprocessing against direct formulas (no tensorflow)."""
import numpy as np
import pytest

from mmjax.data import preprocess as pp


def test_tokenize_bytes():
    ids, mask = pp.tokenize_bytes(["hé", b"abcdef"], max_len=5)
    # mmjax.tokenizer.ByteTokenizer: bos 2, eos 3, byte b -> b + 4; truncation keeps EOS last.
    assert ids[0].tolist() == [2, 0x68 + 4, 0xC3 + 4, 0xA9 + 4, 3]
    assert ids[1].tolist() == [2, ord("a") + 4, ord("b") + 4, ord("c") + 4, 3]  # truncated
    assert mask.tolist() == [[True] * 5, [True] * 5]
    ids, mask = pp.tokenize_bytes([""], max_len=4)
    assert ids[0].tolist() == [2, 3, 0, 0] and mask[0].tolist() == [True, True, False, False]


def test_augment_images_is_a_shifted_crop_or_flip():
    rng = np.random.default_rng(0)
    x = rng.random((6, 5, 5, 1)).astype(np.float32)
    out = pp.augment_images(x, np.random.default_rng(1), pad=1, flip=True)
    ref_rng = np.random.default_rng(1)
    dy, dx = ref_rng.integers(0, 3, 6), ref_rng.integers(0, 3, 6)
    flips = ref_rng.random(6) < 0.5
    for i in range(6):
        p = np.pad(x[i], ((1, 1), (1, 1), (0, 0)))[dy[i] : dy[i] + 5, dx[i] : dx[i] + 5]
        assert np.array_equal(out[i], p[:, ::-1] if flips[i] else p)


def test_audio_shift_gain_keeps_mask_consistent():
    x = np.zeros((2, 10), np.float32)
    x[:, :4] = 1.0
    out, lengths = pp.augment_audio(x, np.array([4, 4]), np.random.default_rng(0), gain_db=6.0, shift=3, noise_std=0.0)
    for i in range(2):
        start = np.nonzero(out[i])[0][0]
        assert lengths[i] == 4 + start and np.allclose(out[i, start : start + 4], out[i, start])
        assert 10 ** (-6 / 20) - 1e-6 <= out[i, start] <= 10 ** (6 / 20) + 1e-6


def test_add_noise_at_snr():
    rng = np.random.default_rng(0)
    x = np.zeros((3, 4000), np.float32)
    x[:, :3000] = np.sin(np.arange(3000) / 7.0)
    out = pp.add_noise_at_snr(x, np.array([3000] * 3), rng, snr_db=10.0)
    noise = out[:, :3000] - x[:, :3000]
    snr = 10 * np.log10((x[:, :3000] ** 2).sum(1) / (noise**2).sum(1))
    # the SNR estimate over 3000 samples has a std of about 0.11 dB
    assert np.allclose(snr, 10.0, atol=0.5) and not out[:, 3000:].any()


def test_add_noise_at_snr_draws_each_examples_noise_for_its_valid_samples():
    from mmjax.data.draws import RowDraws

    rng = np.random.default_rng(3)
    lengths = np.array([0, 5, 800, 1000, 1200])  # the last is longer than the row: cropped
    x = np.where(np.arange(1000)[None] < lengths[:, None], rng.standard_normal((5, 1000)), 0).astype(np.float32)
    out = pp.add_noise_at_snr(x, lengths, RowDraws.keyed(np.arange(5) + 40, 7, 1), snr_db=-6.0)
    for i, n in enumerate(np.minimum(lengths, 1000)):
        power = (x[i, :n].astype(np.float64) ** 2).sum() / max(lengths[i], 1)
        # a row's noise is the start of its own generator's stream, whatever its length
        want = x[i, :n] + np.sqrt(power / 10 ** -0.6) * np.random.default_rng([7, 1, 40 + i]).standard_normal(
            1000, dtype=np.float32)[:n]
        np.testing.assert_allclose(out[i, :n], want, rtol=1e-5, atol=1e-6)
        assert not out[i, n:].any()


def test_modality_dropout_rules():
    present = np.array([[True, True, True]] * 500 + [[True, False, False]] * 500)
    out = pp.modality_dropout(present, [1.0, 1.0, 1.0], np.random.default_rng(0))
    assert (out.sum(1) == 1).all() and not (out & ~present).any()
    assert out[500:, 0].all()  # the only present modality is the one kept
    kept = out[:500].mean(0)
    assert np.all(np.abs(kept - 1 / 3) < 0.08)  # the survivor is drawn uniformly
    out = pp.modality_dropout(present, [0.0, 0.0, 0.0], np.random.default_rng(0))
    assert np.array_equal(out, present)


def test_class_weight_table():
    labels = np.array([0, 0, 0, 1])
    assert np.allclose(pp.class_weight_table(labels, 3, "balanced"), [4 / 9, 4 / 3, 0.0])
    with pytest.raises(ValueError, match="class_weights"):
        pp.class_weight_table(labels, 3, [1.0, 2.0])


def test_import_does_not_load_tensorflow():
    import subprocess
    import sys

    code = "import sys, mmjax.data, mmjax.data.global_batch; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_to_global_single_process():
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    from mmjax.data import to_global

    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    batch = {"inputs": {"x": np.arange(8, dtype=np.float32).reshape(4, 2)}, "label": np.arange(4, dtype=np.int32)}
    out = to_global(batch, NamedSharding(mesh, P("data")))
    assert isinstance(out["label"], jax.Array) and out["inputs"]["x"].shape == (4, 2)
    assert np.array_equal(np.asarray(out["inputs"]["x"]), batch["inputs"]["x"])
