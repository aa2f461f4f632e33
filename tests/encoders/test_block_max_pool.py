"""block_max_pool against flax's reduce_window max pooling (values and gradients)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.encoders.common import block_max_pool


@pytest.mark.parametrize("shape, window", [
    ((2, 8, 6, 3), (2, 2)),
    ((2, 63, 40, 4), (2, 2)),    # odd height: SAME pads one row of -inf at the end
    ((1, 7, 5, 2), (3, 2)),      # a 3-window: pads split 1 before / 1 after on the height
    ((2, 5, 7, 6, 3), (1, 2, 2)),
    ((1, 5, 7, 6, 2), (2, 2, 2)),
])
def test_values_and_gradients_match_reduce_window(shape, window):
    # Distinct random values: no ties, so every max has one arg-max and both gradients agree.
    x = jnp.asarray(np.random.default_rng(0).permutation(np.prod(shape)).reshape(shape).astype(np.float32))
    ref = lambda v: nn.max_pool(v, window, strides=window, padding="SAME")
    np.testing.assert_array_equal(np.asarray(block_max_pool(x, window)), np.asarray(ref(x)))
    g = np.random.default_rng(1).normal(size=ref(x).shape).astype(np.float32)
    grad = jax.grad(lambda v: jnp.sum(block_max_pool(v, window) * g))(x)
    grad_ref = jax.grad(lambda v: jnp.sum(ref(v) * g))(x)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(grad_ref), rtol=1e-6, atol=0)


def test_ties_share_the_gradient_and_bad_window_is_an_error():
    x = jnp.zeros((1, 2, 2, 1))
    grad = jax.grad(lambda v: block_max_pool(v, (2, 2)).sum())(x)
    np.testing.assert_allclose(np.asarray(grad), np.full((1, 2, 2, 1), 0.25))
    with pytest.raises(ValueError, match="window"):
        block_max_pool(x, (2, 2, 2))
