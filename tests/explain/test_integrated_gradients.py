"""Integrated gradients: exact on a linear model, complete on a small CNN classifier."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.explain import ExplainError, input_value_fn, integrated_gradients, quadrature
from mmjax.models.classifier import Classifier


@pytest.mark.parametrize("method", ["trapezoid", "riemann"])
def test_linear_model_is_exact(method):
    rng = np.random.RandomState(0)
    w = rng.randn(3, 4, 2).astype(np.float32)
    x = rng.randn(5, 3, 4, 2).astype(np.float32)
    x0 = rng.randn(3, 4, 2).astype(np.float32)
    f = lambda z: jnp.sum(z * w, axis=(1, 2, 3)) + 0.7  # noqa: E731
    out = integrated_gradients(f, x, baseline=x0, steps=3, method=method, chunk=2)  # 2 chunks, one padded
    assert out.attributions.shape == x.shape
    np.testing.assert_allclose(out.attributions, (x - x0) * w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.gap, 0.0, atol=1e-4)
    np.testing.assert_allclose(out.f_input - out.f_baseline, ((x - x0) * w).sum((1, 2, 3)), rtol=1e-5, atol=1e-5)


def test_quadrature_weights():
    a, w = quadrature(4, "trapezoid")
    np.testing.assert_allclose(a, [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(w, [0.125, 0.25, 0.25, 0.25, 0.125])
    a, w = quadrature(2, "riemann")
    np.testing.assert_allclose(a, [0.25, 0.75])
    # x^3 on [0, 2] with 2 trapezoids: the quadrature error shows as a gap (exact IG would be 8).
    out = integrated_gradients(lambda z: jnp.sum(z ** 3, axis=1), jnp.array([[2.0]]), steps=2, method="trapezoid")
    assert out.f_input[0] == pytest.approx(8.0) and abs(out.gap[0]) > 0.5  # coarse steps show a gap


def _cnn_model():
    model = Classifier(num_classes=3, encoders={"image": {"name": "cnn", "features": (16, 32), "convs_per_stage": 1},
                                                "vec": {"name": "mlp", "features": (8,)}},
                       fusion="concat", fusion_config={"out_dim": 8}, head_hidden=(8,))
    rng = np.random.RandomState(1)
    batch = {"inputs": {"image": rng.randn(2, 8, 8, 1).astype(np.float32), "vec": rng.randn(2, 3).astype(np.float32)},
             "modality_mask": {"image": np.ones(2, bool), "vec": np.ones(2, bool)}}
    variables = model.init(jax.random.PRNGKey(0), batch)
    # Trained-like weights: freshly initialised biases are zero, which makes the conv + LayerNorm
    # encoder scale-invariant around the zero baseline (a jump at x = 0 no path integral can see).
    leaves, tree = jax.tree_util.tree_flatten(variables)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    leaves = [v + 0.1 * jax.random.normal(k, v.shape) for v, k in zip(leaves, keys)]
    return model, jax.tree_util.tree_unflatten(tree, leaves), batch


def test_completeness_on_a_cnn_classifier():
    model, variables, batch = _cnn_model()
    logits_fn = lambda b: model.apply(variables, b)  # noqa: E731
    full = np.asarray(logits_fn(batch))
    target = np.argmax(full, -1)
    f = input_value_fn(logits_fn, batch, "image", target, value="logit")
    # ReLU kinks and LayerNorm make this path bumpy: 64 points leave gaps of several percent here,
    # the gap shrinks with more points and is below 1% at 1024.
    coarse = integrated_gradients(f, batch["inputs"]["image"], steps=16)
    out = integrated_gradients(f, batch["inputs"]["image"], steps=1024, chunk=256)
    same = integrated_gradients(f, batch["inputs"]["image"], steps=1024, chunk=1024)
    np.testing.assert_allclose(same.attributions, out.attributions, rtol=1e-4, atol=1e-7)
    assert out.attributions.shape == (2, 8, 8, 1)
    delta = out.f_input - out.f_baseline
    assert np.all(np.abs(delta) > 0.1)  # a real difference to explain
    np.testing.assert_allclose(out.attributions.sum((1, 2, 3)), delta, rtol=1e-2)
    np.testing.assert_allclose(out.gap, out.attributions.sum((1, 2, 3)) - delta, atol=1e-9)
    assert np.all(np.abs(out.gap) < np.abs(coarse.gap))
    np.testing.assert_allclose(out.f_input, full[np.arange(2), target], rtol=1e-5)


def test_probability_value_is_the_softmax_of_the_target():
    model, variables, batch = _cnn_model()
    logits_fn = lambda b: model.apply(variables, b)  # noqa: E731
    full = np.asarray(logits_fn(batch))
    f = input_value_fn(logits_fn, batch, "vec", [0, 2], value="probability")
    out = integrated_gradients(f, batch["inputs"]["vec"], steps=8)
    np.testing.assert_allclose(out.f_input, np.asarray(jax.nn.softmax(full))[[0, 1], [0, 2]], rtol=1e-5)
    assert out.attributions.shape == (2, 3)


def test_refuses_integer_inputs_and_unknown_modalities():
    with pytest.raises(ExplainError, match="float input"):
        integrated_gradients(lambda z: z.sum(1), np.ones((1, 3), np.int32))
    with pytest.raises(ExplainError, match="steps >= 1"):
        integrated_gradients(lambda z: z.sum(1), np.ones((1, 3)), steps=0)
    with pytest.raises(ExplainError, match="'audio' is not in"):
        input_value_fn(lambda b: b, {"inputs": {"image": np.zeros(1)}}, "audio", [0])
