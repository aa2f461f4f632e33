"""The bilinear family (mcb, mlb, mfh, mutan, block, linear_sum, concat_mlp) against
numpy formulas of the published definitions (block.bootstrap.pytorch's fusions.py),
on the same weights; gradients, masks, bf16, 2-4 modalities, errors, cost vs XLA."""
import math
import zlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mmjax.fusion as F
from mmjax.fusion.base import FusionInputError
from mmjax.fusion.bilinear_family import get_sizes_list
from mmjax.registry import BadSizeError

OUT = 5
DIMS = (4, 3, 6, 2)
EPS = 1e-12  # the blocks' normalisation eps; numpy uses the published eps-free formula

ACT = {"relu": lambda x: np.maximum(x, 0), "tanh": np.tanh, "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
       None: lambda x: x}


def lin(p, x):
    return x @ np.asarray(p["kernel"], np.float64) + np.asarray(p["bias"], np.float64)


def power_l2(z):
    """Published: sqrt(relu(z)) - sqrt(relu(-z)), then F.normalize(p=2) (eps 1e-12)."""
    z = np.sqrt(np.maximum(z, 0)) - np.sqrt(np.maximum(-z, 0))
    return z / np.maximum(np.linalg.norm(z, axis=-1, keepdims=True), 1e-12)


def mlb_np(p, xs, mm_dim, activ_input="tanh", activ_output="relu", normalize=False):
    z = np.prod([ACT[activ_input](lin(p[f"linear_{n}"], x)) for n, x in xs.items()], axis=0)
    z = power_l2(z) if normalize else z
    return ACT[activ_output](lin(p["linear_out"], z))


def mfh_np(p, xs, mm_dim, factor=2, order=2, normalize=False):
    skip, zs = 1.0, []
    for i in range(order):
        skip = skip * np.prod([ACT["relu"](lin(p[f"linear_{n}_{i}"], x)) for n, x in xs.items()], axis=0)
        z = skip.reshape(-1, mm_dim, factor).sum(2)
        zs.append(power_l2(z) if normalize else z)
    return ACT["relu"](lin(p["linear_out"], np.concatenate(zs, -1)))


def mutan_np(p, xs, mm_dim, rank, normalize=False):
    m = np.prod([lin(p[f"merge_{n}"], lin(p[f"linear_{n}"], x)) for n, x in xs.items()], axis=0)
    z = m.reshape(-1, rank, mm_dim).sum(1)
    return lin(p["linear_out"], power_l2(z) if normalize else z)


def block_np(p, xs, mm_dim, chunks, rank, pos_norm="before_cat"):
    proj = {n: lin(p[f"linear_{n}"], x) for n, x in xs.items()}
    start, zs = 0, []
    for c in range(chunks):
        size = np.asarray(p[f"merge_{next(iter(xs))}_{c}"]["kernel"]).shape[0]
        m = np.prod([lin(p[f"merge_{n}_{c}"], proj[n][:, start:start + size]) for n in xs], axis=0)
        z = m.reshape(-1, rank, size).sum(1)
        zs.append(power_l2(z) if pos_norm == "before_cat" else z)
        start += size
    assert start == mm_dim
    z = np.concatenate(zs, -1)
    return lin(p["linear_out"], power_l2(z) if pos_norm == "after_cat" else z)


def sketch_hashes(name, d, mm_dim, seed):
    """The documented rule, written out again."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    h = rng.integers(0, mm_dim, size=d)
    return h, 2 * rng.integers(0, 2, size=d) - 1


def mcb_np(p, xs, mm_dim, seed=1, normalize=False):
    spectrum = 1.0
    for n, x in xs.items():
        h, s = sketch_hashes(n, x.shape[-1], mm_dim, seed)
        psi = np.zeros((x.shape[0], mm_dim))
        for i in range(x.shape[-1]):
            psi[:, h[i]] += s[i] * x[:, i]
        spectrum = spectrum * np.fft.rfft(psi, axis=-1)
    z = np.fft.irfft(spectrum, n=mm_dim, axis=-1)
    return ACT["relu"](lin(p["linear_out"], power_l2(z) if normalize else z))


def linear_sum_np(p, xs, mm_dim, normalize=False):
    z = sum(ACT["relu"](lin(p[f"linear_{n}"], x)) for n, x in xs.items())
    return ACT["relu"](lin(p["linear_out"], power_l2(z) if normalize else z))


def concat_mlp_np(p, xs, dimensions):
    z = np.concatenate(list(xs.values()), -1)
    for i in range(len(dimensions)):
        z = ACT["relu"](lin(p[f"linear_{i}"], z))
    return lin(p["linear_out"], z)


# (block, config, numpy formula): configs reach each branch (normalise, order 3, after_cat, uneven chunks).
CASES = [
    ("mlb", dict(mm_dim=7), mlb_np),
    ("mlb", dict(mm_dim=7, activ_input="relu", activ_output=None, normalize=True), mlb_np),
    ("mfh", dict(mm_dim=4, factor=3), mfh_np),
    ("mfh", dict(mm_dim=3, factor=2, order=3, normalize=True), mfh_np),
    ("mutan", dict(mm_dim=6, rank=3), mutan_np),
    ("mutan", dict(mm_dim=6, rank=2, normalize=True), mutan_np),
    ("block", dict(mm_dim=10, chunks=4, rank=3), block_np),
    ("block", dict(mm_dim=8, chunks=2, rank=2, pos_norm="after_cat"), block_np),
    ("mcb", dict(mm_dim=16), mcb_np),
    ("mcb", dict(mm_dim=9, seed=7), mcb_np),
    ("mcb", dict(mm_dim=16, normalize=True), mcb_np),
    ("linear_sum", dict(mm_dim=7), linear_sum_np),
    ("linear_sum", dict(mm_dim=7, normalize=True), linear_sum_np),
    ("concat_mlp", dict(dimensions=(8, 6)), concat_mlp_np),
    ("concat_mlp", dict(dimensions=()), concat_mlp_np),
]
NAMES = sorted({c[0] for c in CASES})


def features(m, batch=3, seed=0):
    rng = np.random.default_rng(seed)
    return {f"m{i}": rng.standard_normal((batch, DIMS[i])).astype(np.float32) for i in range(m)}


def random_params(block, x, seed=1):
    """Init, then every weight (biases included) shifted by noise so no bias stays 0."""
    params = nn.unbox(block.init(jax.random.key(0), x))["params"]
    leaves, tree = jax.tree.flatten(params)
    rng = np.random.default_rng(seed)
    leaves = [np.asarray(l) + 0.3 * rng.standard_normal(l.shape).astype(np.float32) for l in leaves]
    return jax.tree.unflatten(tree, leaves)


def numpy_config(cfg):
    return {k: v for k, v in cfg.items() if k not in ("eps",)}


@pytest.mark.parametrize("m", [2, 3, 4])
@pytest.mark.parametrize("name,cfg,formula", CASES, ids=lambda v: v if isinstance(v, str) else "")
def test_matches_numpy_formula(name, cfg, formula, m):
    x = features(m)
    block = F.create(name, out_dim=OUT, **({"eps": EPS} if "normalize" in cfg or name == "block" else {}), **cfg)
    p = random_params(block, x)
    got = np.asarray(block.apply({"params": p}, x))
    want = formula(p, {k: v.astype(np.float64) for k, v in x.items()}, **numpy_config(cfg))
    assert got.shape == (3, OUT)
    assert np.abs(want).max() > 1e-3  # an all-zero output would agree trivially
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)


def test_mcb_is_the_tensor_sketch_of_the_outer_product():
    """Fukui et al.: Psi(x (x) y) with hash (h_x[i] + h_y[j]) mod D and sign s_x[i] s_y[j]."""
    d, x = 16, features(2)
    block = F.create("mcb", out_dim=OUT, mm_dim=d, activ_output=None)
    p = random_params(block, x)
    (hx, sx), (hy, sy) = (sketch_hashes(n, v.shape[-1], d, 1) for n, v in sorted(x.items()))
    a, b = x["m0"].astype(np.float64), x["m1"].astype(np.float64)
    sketch = np.zeros((3, d))
    for i in range(a.shape[1]):
        for j in range(b.shape[1]):
            sketch[:, (hx[i] + hy[j]) % d] += sx[i] * sy[j] * a[:, i] * b[:, j]
    got = np.asarray(block.apply({"params": p}, x))
    np.testing.assert_allclose(got, lin(p["linear_out"], sketch), rtol=2e-4, atol=2e-5)


def test_mcb_hashes_are_fixed_by_seed_and_name():
    x = features(2)
    block = F.create("mcb", out_dim=OUT, mm_dim=16)
    p = random_params(block, x)
    y = block.apply({"params": p}, x)
    np.testing.assert_array_equal(y, F.create("mcb", out_dim=OUT, mm_dim=16).apply({"params": p}, x))
    assert not np.allclose(y, F.create("mcb", out_dim=OUT, mm_dim=16, seed=2).apply({"params": p}, x))
    renamed = {"m0": x["m0"], "zz": x["m1"]}
    assert not np.allclose(y, block.apply({"params": p}, renamed))


@pytest.mark.parametrize("name,cfg", [(c[0], c[1]) for c in CASES if c[1].get("normalize") or c[0] in
                                      ("mcb", "block", "concat_mlp")])
def test_gradients_reach_every_parameter_and_stay_finite_when_masked(name, cfg):
    # Two modalities and a large batch: mfh's order-3 cascade multiplies 6 relus per unit.
    x = features(2, batch=64)
    block = F.create(name, out_dim=OUT, **cfg)
    p = random_params(block, x)
    mask = {"m1": jnp.array([True, False] * 32)}

    def loss(p, mask):
        return jnp.sum(block.apply({"params": p}, x, mask) ** 2)

    for g in (jax.grad(loss)(p, None), jax.grad(loss)(p, mask)):
        for path, leaf in jax.tree_util.tree_leaves_with_path(g):
            assert np.all(np.isfinite(leaf)), path
    for path, leaf in jax.tree_util.tree_leaves_with_path(jax.grad(loss)(p, None)):
        assert np.abs(leaf).max() > 0, f"{name}: no gradient reaches {jax.tree_util.keystr(path)}"


@pytest.mark.parametrize("name,cfg", [(c[0], c[1]) for c in CASES[::2]])
def test_missing_modality_is_its_input_zeroed(name, cfg):
    x = features(3, batch=4)
    block = F.create(name, out_dim=OUT, **cfg)
    p = random_params(block, x)
    present = np.array([True, False, True, False])
    garbage = dict(x, m1=np.where(present[:, None], x["m1"], np.nan).astype(np.float32))
    got = np.asarray(block.apply({"params": p}, garbage, {"m1": jnp.asarray(present)}))
    zeroed = dict(x, m1=np.where(present[:, None], x["m1"], 0).astype(np.float32))
    np.testing.assert_allclose(got, block.apply({"params": p}, zeroed), rtol=1e-5, atol=1e-6)
    assert np.all(np.isfinite(got))


def test_mcb_missing_modality_leaves_only_the_output_bias():
    x = features(2)
    block = F.create("mcb", out_dim=OUT, mm_dim=16, activ_output=None)
    p = random_params(block, x)
    got = block.apply({"params": p}, x, {"m0": jnp.array([False, True, False])})
    np.testing.assert_allclose(got[0], p["linear_out"]["bias"], rtol=1e-6)
    np.testing.assert_allclose(got[2], p["linear_out"]["bias"], rtol=1e-6)


@pytest.mark.parametrize("name,cfg", [(c[0], c[1]) for c in CASES[::2]])
def test_bfloat16(name, cfg):
    x = features(3)
    ref = F.create(name, out_dim=OUT, **cfg)
    p = random_params(ref, x)
    want = np.asarray(ref.apply({"params": p}, x))
    y = F.create(name, out_dim=OUT, dtype=jnp.bfloat16, **cfg).apply({"params": p}, x)
    assert y.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(y, np.float32), want, rtol=0.1, atol=0.1 * np.abs(want).max())
    half = F.create(name, out_dim=OUT, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16, **cfg)
    params = nn.unbox(half.init(jax.random.key(0), x))["params"]
    assert {l.dtype for l in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
    assert np.all(np.isfinite(np.asarray(half.apply({"params": params}, x), np.float32)))


@pytest.mark.parametrize("name,cfg", [(c[0], c[1]) for c in CASES[::2]])
def test_weights_carry_logical_axis_names(name, cfg):
    boxed = F.create(name, out_dim=OUT, **cfg).init(jax.random.key(0), features(2))["params"]
    leaves = jax.tree.leaves(boxed, is_leaf=lambda v: isinstance(v, nn.LogicallyPartitioned))
    assert leaves and all(isinstance(v, nn.LogicallyPartitioned) and len(v.names) == v.value.ndim for v in leaves)


def test_dropout_only_in_training():
    x = features(2, batch=16)
    block = F.create("mlb", out_dim=OUT, mm_dim=32, dropout_rate=0.5)
    p = random_params(block, x)
    y = block.apply({"params": p}, x)
    np.testing.assert_array_equal(y, block.apply({"params": p}, x, train=False))
    y_train = block.apply({"params": p}, x, train=True, rngs={"dropout": jax.random.key(3)})
    assert not np.allclose(y, y_train)


def test_token_inputs_are_mean_pooled():
    x = {"a": np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32), "b": features(2)["m1"][:2]}
    block = F.create("mutan", out_dim=OUT, mm_dim=4, rank=2)
    p = random_params(block, x)
    np.testing.assert_allclose(block.apply({"params": p}, x),
                               block.apply({"params": p}, dict(x, a=x["a"].mean(1))), rtol=1e-5, atol=1e-6)


def test_chunk_sizes():
    assert get_sizes_list(1600, 20) == [80] * 20
    assert get_sizes_list(10, 4) == [3, 3, 3, 1]
    assert get_sizes_list(6, 4) == [2, 2, 1, 1]     # published code: [2, 2, 2, 0]
    assert get_sizes_list(7, 5) == [2, 2, 1, 1, 1]
    assert get_sizes_list(5, 5) == [1] * 5


@pytest.mark.parametrize("name,cfg,match", [
    ("mlb", dict(activ_input="gelu"), "activ_input must be one of"),
    ("linear_sum", dict(activ_output="softmax"), "activ_output must be one of"),
    ("concat_mlp", dict(activation=None), "activation must be"),
    ("block", dict(mm_dim=4, chunks=5), r"chunks \(5\) must be <= mm_dim \(4\)"),
    ("block", dict(pos_norm="middle"), "pos_norm must be"),
])
def test_bad_config_is_a_one_line_error(name, cfg, match):
    with pytest.raises(FusionInputError, match=match):
        F.create(name, out_dim=OUT, **cfg).init(jax.random.key(0), features(2))


@pytest.mark.parametrize("name", NAMES)
def test_one_modality_and_bad_sizes_are_refused(name):
    with pytest.raises(FusionInputError, match=f"{name}: needs at least 2 modalities"):
        F.create(name, out_dim=OUT).init(jax.random.key(0), {"m0": np.zeros((2, 3), np.float32)})
    key = "dimensions" if name == "concat_mlp" else "mm_dim"
    with pytest.raises(BadSizeError, match=key):
        F.create(name, out_dim=OUT, **{key: (0,) if key == "dimensions" else 0})


FLOP_BATCH = 16
FLOP_CASES = [
    ("mlb", dict(mm_dim=64), (24, 32, 16)),
    ("mfh", dict(mm_dim=32, factor=2), (24, 32)),
    ("mutan", dict(mm_dim=32, rank=4), (24, 32, 16)),
    ("block", dict(mm_dim=64, chunks=4, rank=4), (24, 32)),
    ("mcb", dict(mm_dim=512), (24, 32)),
    ("linear_sum", dict(mm_dim=64), (24, 32, 16)),
    ("concat_mlp", dict(dimensions=(64, 48)), (24, 32, 16)),
]


@pytest.mark.parametrize("name,cfg,dims", FLOP_CASES, ids=[c[0] for c in FLOP_CASES])
def test_cost_flops_close_to_xla(name, cfg, dims):
    feats = {f"m{i}": jnp.zeros((FLOP_BATCH, d)) for i, d in enumerate(dims)}
    block = F.create(name, out_dim=32, **cfg)
    params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                          nn.unbox(jax.eval_shape(block.init, jax.random.key(0), feats))["params"])
    analysis = jax.jit(lambda p, x: block.apply({"params": p}, x)).lower(params, feats).compile().cost_analysis()
    measured = (analysis[0] if isinstance(analysis, (list, tuple)) else analysis)["flops"] / FLOP_BATCH
    model = F.cost(name, list(dims), 32, **cfg).flops
    if name == "mcb":  # XLA counts an rfft as 8 n log2 n and an irfft as 4 n log2 n, the model 2.5 n log2 n
        n = cfg["mm_dim"]
        model += (8 * len(dims) + 4 - 2.5 * (len(dims) + 1)) * n * math.log2(n)
    assert 0.95 * model <= measured <= 1.15 * model, (name, model, measured)
