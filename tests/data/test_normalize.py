"""uint8 images normalised where they land: host numpy and jitted jax agree with the formula."""
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.data.normalize import image_norms, normalize_images
from mmjax.train.parallel import Runner, prefetch_to_device


def _batch():
    rng = np.random.default_rng(0)
    return {
        "inputs": {"image": rng.integers(0, 256, size=(4, 3, 3, 2), dtype=np.uint8),
                   "audio": rng.standard_normal((4, 5)).astype(np.float32)},
        "modality_mask": {"image": np.array([True, False, True, True]), "audio": np.ones(4, bool)},
        "label": np.arange(4, dtype=np.int32),
    }


NORMS = {"image": ((0.2, 0.5), (0.25, 0.5))}


def test_formula_missing_rows_and_idempotence():
    b = _batch()
    out = normalize_images(b, NORMS)["inputs"]["image"]
    expected = (b["inputs"]["image"] / 255.0 - np.array([0.2, 0.5])) / np.array([0.25, 0.5])
    expected[1] = 0.0  # a missing image is exactly zero, as the batch contract says
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
    assert out.dtype == np.float32 and b["inputs"]["image"].dtype == np.uint8  # input untouched
    again = normalize_images({**b, "inputs": {**b["inputs"], "image": out}}, NORMS)["inputs"]["image"]
    assert again is out  # float images pass unchanged
    on_device = jax.jit(lambda x: normalize_images(x, NORMS, xp=jnp))(b)["inputs"]["image"]
    np.testing.assert_allclose(np.asarray(on_device), out, rtol=1e-6, atol=1e-6)


def test_image_norms_from_a_data_config():
    from mmjax.data import default_config

    assert image_norms(default_config("av_digits")) == {"image": ((0.13,), (0.31,))}


def test_runner_moves_uint8_and_normalises_on_device():
    runner = Runner("single", None, lambda p: None, input_norm=NORMS)
    b = _batch()
    placed = runner.put_batch(b)
    assert isinstance(placed["inputs"]["image"], jax.Array) and placed["inputs"]["image"].dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(placed["inputs"]["image"]), normalize_images(b, NORMS)["inputs"]["image"],
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(placed["inputs"]["audio"]), b["inputs"]["audio"])


def test_prefetch_to_device_keeps_order_and_stays_ahead():
    put = []
    out = prefetch_to_device(range(5), lambda x: put.append(x) or x * 10, size=2)
    assert next(out) == 0 and put == [0, 1, 2]  # two batches in flight behind the one handed out
    assert list(out) == [10, 20, 30, 40] and put == [0, 1, 2, 3, 4]
