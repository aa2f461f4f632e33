"""The defaults of ``gated``, ``film`` and ``sum`` against their published forms, where those train badly.

On av_digits the encoders trained through GMU's tanh and softmax gate grew their
pooled features from std 0.5-1 to 7-9 in 300 steps; the pre-activations reached
|12|, both saturated and the run stayed near chance (experiments/SWEEP_av_digits.md).
Here the features come at that scale (std ~10) directly: in the published GMU
(``normalize=False``) the tanh is flat and the gate one-hot; with the default
(inputs unit-scaled first) nothing depends on the scale. FiLM's default starts W_gamma at zero, so gamma = 1 and
the block is exactly base + beta at initialisation; its product gamma * base grows
faster than the features (both factors scale with them), and the default
LayerNorm over the output keeps what the head sees at unit scale. ``sum``'s default is a
mean over the present modalities: at initialisation exactly ``weighted``, where the plain
sum is M times its scale.
"""
import flax.linen as nn
import jax
import numpy as np

import mmjax.fusion  # noqa: F401  (registers every block)
from mmjax.fusion.registry import FUSION

K = 3        # classes; the label is (c_0 + c_1) mod K: both modalities are needed
DIM = 8
SCALE = 10.0


def make_data(n, seed):
    protos = np.random.default_rng(0).normal(size=(2, K, DIM))
    rng = np.random.default_rng(seed)
    c = rng.integers(0, K, size=(2, n))
    x = {f"m{i}": (SCALE * (protos[i][c[i]] + 0.3 * rng.normal(size=(n, DIM)))).astype(np.float32)
         for i in range(2)}
    return x, (c.sum(0) % K).astype(np.int32)


def tanh_slope_and_gate(config, x):
    """Mean tanh'(pre-activation) of GMU's hidden units and mean largest gate weight."""
    block = FUSION.get("gated")(out_dim=16, **config)
    params = block.init(jax.random.PRNGKey(0), x)
    _, state = block.apply(params, x, capture_intermediates=True, mutable=["intermediates"])
    inter = state["intermediates"]
    pre = np.concatenate([np.asarray(inter[f"hidden_{n}"]["__call__"][0]) for n in sorted(x)], -1)
    logits = np.asarray(inter["gate"]["__call__"][0]).reshape(len(x[next(iter(x))]), len(x), -1)
    gates = np.exp(logits - logits.max(1, keepdims=True))
    gates /= gates.sum(1, keepdims=True)
    return float((1 - np.tanh(pre) ** 2).mean()), float(gates.max(1).mean())


def test_published_gmu_saturates_at_grown_feature_scale_and_default_does_not():
    x, _ = make_data(256, 1)
    old_slope, old_gate = tanh_slope_and_gate({"normalize": False}, x)
    new_slope, new_gate = tanh_slope_and_gate({}, x)
    # Published GMU: the tanh is flat (almost no gradient back to the encoders), the gate near one-hot.
    assert old_slope < 0.15, old_slope
    assert old_gate > 0.9, old_gate
    # Default: the same as at unit feature scale, whatever the scale.
    assert new_slope > 0.3, new_slope
    assert new_gate < 0.8, new_gate
    small = {n: v / SCALE for n, v in x.items()}
    np.testing.assert_allclose(tanh_slope_and_gate({}, small)[0], new_slope, rtol=1e-3)


def test_film_default_starts_as_identity_modulation():
    x, _ = make_data(16, 3)
    block = FUSION.get("film")(out_dim=5, normalize=False)  # the initialisation without the output LayerNorm
    params = nn.unbox(block.init(jax.random.PRNGKey(0), x))
    np.testing.assert_array_equal(params["params"]["gamma"]["kernel"], 0.0)
    p = params["params"]
    base = x["m0"] @ p["base"]["kernel"] + p["base"]["bias"]
    beta = x["m1"] @ p["beta"]["kernel"] + p["beta"]["bias"]
    np.testing.assert_allclose(block.apply(params, x), base + beta, rtol=1e-5, atol=1e-4)
    # The reference's init (LeCun W_gamma) does not: gamma - 1 is at the conditioner's scale.
    untuned = FUSION.get("film")(out_dim=5, identity_init=False)
    assert np.abs(nn.unbox(untuned.init(jax.random.PRNGKey(0), x))["params"]["gamma"]["kernel"]).max() > 0.1


def film_params(x, gamma_std):
    """FiLM params for ``x`` (out_dim 16) with W_gamma drawn at ``gamma_std``, as after training."""
    params = nn.unbox(FUSION.get("film")(out_dim=16).init(jax.random.PRNGKey(0), x))
    rng = np.random.default_rng(1)
    params["params"]["gamma"]["kernel"] = (gamma_std * rng.normal(size=(DIM, 16))).astype(np.float32)
    return params


def np_film(p, x):
    """The published FiLM in numpy: (1 + W_gamma x_c + b_gamma) * (W x_b + b) + W_beta x_c + b_beta."""
    lin = lambda q, v: v.astype(np.float64) @ q["kernel"] + q["bias"]  # noqa: E731
    return (1 + lin(p["gamma"], x["m1"])) * lin(p["base"], x["m0"]) + lin(p["beta"], x["m1"])


def test_film_product_grows_with_feature_scale_and_default_output_does_not():
    grown, _ = make_data(64, 4)  # std ~10, the scale the encoders reach when trained through a product
    unit = {n: v / SCALE for n, v in grown.items()}
    published, default = FUSION.get("film")(out_dim=16, normalize=False), FUSION.get("film")(out_dim=16)
    params = film_params(unit, 0.1)
    assert set(params["params"]) == {"base", "gamma", "beta"}  # the default adds no parameters
    raw = {k: np_film(params["params"], x) for k, x in (("unit", unit), ("grown", grown))}
    # Published FiLM: z grows faster than the features (gamma - 1 and base both scale with them):
    # features x10 give z x25 here, where a linear block would give x10.
    assert raw["grown"].std() / raw["unit"].std() > 2 * SCALE, raw["grown"].std() / raw["unit"].std()
    for k, x in (("unit", unit), ("grown", grown)):
        want = raw[k]
        np.testing.assert_allclose(published.apply(params, x), want, rtol=1e-4, atol=1e-3)
        # Default: a LayerNorm without parameters over out_dim of the same z, unit scale at any feature scale.
        norm = (want - want.mean(-1, keepdims=True)) / np.sqrt(want.var(-1, keepdims=True) + 1e-6)
        got = np.asarray(default.apply(params, x))
        np.testing.assert_allclose(got, norm, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(got.std(-1), 1.0, rtol=1e-3)


def test_sum_default_is_weighted_at_init_and_plain_sum_is_m_times_it():
    x, _ = make_data(32, 5)
    x["m2"] = x["m0"][:, ::-1].copy()  # M = 3
    default, plain, weighted = (FUSION.get(n)(out_dim=6, **c) for n, c in
                                (("sum", {}), ("sum", {"mean": False}), ("weighted", {})))
    params = nn.unbox(default.init(jax.random.PRNGKey(0), x))
    p = params["params"]
    proj = np.stack([x[n].astype(np.float64) @ p[f"proj_{n}"]["kernel"] + p[f"proj_{n}"]["bias"] for n in sorted(x)], 1)
    np.testing.assert_allclose(default.apply(params, x), proj.mean(1), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(plain.apply(params, x), proj.sum(1), rtol=1e-5, atol=1e-4)  # 3x the scale
    # weighted's softmax weights start at 1/M: with the same projections it is the default sum.
    w_params = {"params": {**p, "modality_logits": np.zeros(3, np.float32)}}
    np.testing.assert_allclose(weighted.apply(w_params, x), default.apply(params, x), rtol=1e-5, atol=1e-5)
    # A missing modality: the mean over the two present ones, the output scale kept.
    mask = {n: np.ones(32, bool) for n in x}
    mask["m2"][:] = False
    np.testing.assert_allclose(default.apply(params, x, mask), proj[:, :2].mean(1), rtol=1e-5, atol=1e-4)
