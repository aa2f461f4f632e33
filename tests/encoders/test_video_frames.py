"""video_frames: equals its image encoder run frame by frame, pooled over the real frames in numpy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import encoders
from mmjax.encoders.common import EncoderInputError

FRAME = {"name": "cnn", "features": (4, 8), "convs_per_stage": 1, "out_dim": 6, "pool": "flatten"}
KEY = jax.random.key(0, impl="unsafe_rbg")


def clips(rng, batch=3, frames=4):
    """(B, F, 8, 8, 1) clips; example i has F - 2i real frames (at least 0), the rest right padding."""
    x = rng.normal(size=(batch, frames, 8, 8, 1)).astype(np.float32)
    lengths = np.maximum(frames - 2 * np.arange(batch), 0)
    return x, np.arange(frames)[None] < lengths[:, None]


@pytest.fixture(scope="module")
def model_and_params():
    model = encoders.create("video_frames", frame=FRAME, temporal_pool="max")
    x, mask = clips(np.random.default_rng(0))
    return model, jax.jit(model.init)(KEY, x, mask)["params"]


def reference(params, x, mask, pool):
    """The frame encoder applied to each real frame alone, its pooled vectors pooled over time in numpy."""
    cnn = encoders.create(**FRAME)
    out = np.zeros((x.shape[0], FRAME["out_dim"]), np.float32)
    tokens = np.zeros((x.shape[0], x.shape[1], FRAME["out_dim"]), np.float32)
    for i in range(x.shape[0]):
        real = np.flatnonzero(mask[i])
        if real.size == 0:
            continue
        per_frame = np.asarray(cnn.apply({"params": params["frame"]}, x[i, real]).pooled)
        tokens[i, real] = per_frame
        out[i] = per_frame.max(0) if pool == "max" else per_frame.mean(0)
    return out, tokens


@pytest.mark.parametrize("pool", ["max", "mean"])
def test_equals_frame_encoder_per_frame(model_and_params, pool):
    model, params = model_and_params
    x, mask = clips(np.random.default_rng(1))
    x[~mask] = 1e3  # whatever padded frames hold must not reach the output
    model = model.clone(temporal_pool=pool)
    got = jax.jit(model.apply)({"params": params}, x, mask)
    want_pooled, want_tokens = reference(params, x, mask, pool)
    np.testing.assert_allclose(np.asarray(got.pooled), want_pooled, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(got.tokens), want_tokens, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(got.mask), mask)
    assert not np.asarray(got.pooled)[2].any()  # example 2 has no real frame


def test_gradient_is_finite_with_an_all_padding_example(model_and_params):
    model, params = model_and_params
    x, mask = clips(np.random.default_rng(2))
    grads = jax.grad(lambda p: model.apply({"params": p}, x, mask).pooled.sum())(params)
    leaves = [np.asarray(g) for g in jax.tree.leaves(grads)]
    assert all(np.isfinite(g).all() for g in leaves) and any(np.abs(g).sum() > 0 for g in leaves)


@pytest.mark.parametrize(
    "options,match",
    [
        (dict(frame=FRAME, temporal_pool="median"), r"temporal_pool must be one of \('mean', 'max'\), got 'median'"),
        (dict(frame={"features": (4,)}), r"frame needs a 'name'"),
        (dict(frame={**FRAME, "features": (0, 8)}), r"frame\.features\[0\] must be >= 1, got 0"),
        (dict(frame={**FRAME, "kernel": 3}), r"bad frame options"),
    ],
)
def test_bad_config_raises_clear_error(options, match):
    x, mask = clips(np.random.default_rng(0), batch=1, frames=2)
    with pytest.raises(EncoderInputError, match=match):
        jax.eval_shape(lambda: encoders.create("video_frames", **options).init(KEY, jnp.asarray(x), mask))
