"""Rows of a missing modality may hold anything: NaN there never reaches the loss or a gradient."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.models.classifier import build_classifier
from mmjax.losses import softmax_cross_entropy

jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})
TINY_T = dict(hidden_dim=8, num_layers=1, num_heads=2, mlp_dim=16)
B = 4
# encoder family -> (encoder config, a clean input, the garbage a missing row holds)
FAMILIES = {
    "vector": ({"name": "mlp", "features": (8,)}, np.ones((B, 6), np.float32), np.nan),
    "image": ({"name": "cnn", "features": (4,)}, np.ones((B, 8, 8, 1), np.float32), np.nan),
    "text": ({"name": "transformer", "vocab_size": 20, "max_len": 8, **TINY_T}, np.ones((B, 8), np.int32), 10**6),
    "audio": ({"name": "audio_cnn", "features": (4,), "sample_rate": 8000, "n_fft": 64, "hop_length": 32,
               "n_mels": 8}, np.full((B, 256), 0.1, np.float32), np.inf),
    "video": ({"name": "video_cnn", "features": (4,)}, np.ones((B, 2, 8, 8, 1), np.float32), np.nan),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_garbage_behind_the_mask_gives_finite_gradients(family):
    spec, x, garbage = FAMILIES[family]
    model = build_classifier({"encoders": {"x": spec, "v": {"name": "mlp", "features": (8,)}}, "fusion": "concat",
                              "fusion_config": {"out_dim": 8}, "head_hidden": ()}, 3)
    clean = {"inputs": {"x": x, "v": np.ones((B, 5), np.float32)},
             "modality_mask": {"x": np.array([True, False, True, True]), "v": np.ones(B, bool)},
             "label": np.arange(B, dtype=np.int32) % 3}
    dirty = {**clean, "inputs": {**clean["inputs"], "x": x.copy()}}
    dirty["inputs"]["x"][1] = garbage
    zeros = {**clean, "inputs": {**clean["inputs"], "x": x.copy()}}
    zeros["inputs"]["x"][1] = 0
    variables = jit(model.init)(jax.random.PRNGKey(0), clean)

    def loss(params, batch):
        logits = model.apply({**variables, "params": params}, batch)
        return softmax_cross_entropy(logits, batch["label"]).mean()

    grad = jit(jax.value_and_grad(loss))
    value, grads = grad(variables["params"], dirty)
    assert np.isfinite(float(value))
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads)), family
    # Exactly what a zero row gives: the garbage is invisible.
    ref_value, ref_grads = grad(variables["params"], zeros)
    assert float(value) == float(ref_value)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), grads, ref_grads)
