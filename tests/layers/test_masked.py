"""The one masked mean: numpy reference, empty rows, and NaN behind the mask in value and gradient."""
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.encoders import common
from mmjax.fusion import base
from mmjax.layers.masked import masked_mean


def test_masked_mean_matches_numpy_and_is_the_one_everyone_uses():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5, 4)).astype(np.float32)
    mask = np.array([[1, 1, 0, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], bool)
    want = np.stack([x[i][mask[i]].mean(0) if mask[i].any() else np.zeros(4) for i in range(3)])
    np.testing.assert_allclose(masked_mean(jnp.asarray(x), jnp.asarray(mask)), want, rtol=1e-6, atol=1e-7)
    assert common.masked_mean is masked_mean and base.masked_mean is masked_mean


def test_nan_behind_the_mask_reaches_neither_value_nor_gradient():
    x = jnp.asarray(np.array([[[1.0, 2.0], [np.nan, np.inf]]], np.float32))
    mask = jnp.asarray([[True, False]])
    np.testing.assert_array_equal(masked_mean(x, mask), [[1.0, 2.0]])
    g = jax.grad(lambda v: masked_mean(v, mask).sum())(x)
    np.testing.assert_array_equal(g, [[[1.0, 1.0], [0.0, 0.0]]])

