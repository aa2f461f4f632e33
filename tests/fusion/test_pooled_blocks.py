"""Pooled fusion blocks against plain-numpy formulas; gradients, masks, dtypes, vmap.

Every case compiles one jitted ``apply`` for its fixed input shapes (module-scoped
fixtures) and reuses it with different values, so the file stays cheap.
"""
import functools
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest

import mmjax.fusion as F
from mmjax.fusion.registry import FUSION

B = 4
OUT = 6
# Modality dims (sorted names); "b" comes as tokens, the rest pooled.
DIMS = {"a": 3, "b": 4, "c": 2, "d": 3}
TOKENS = {"b": 3}

CASES = {
    # case id: (block name, config, modalities)
    "concat": ("concat", {"out_dim": None}, "abc"),
    "concat_proj": ("concat", {"out_dim": OUT}, "abc"),
    "sum": ("sum", {"out_dim": OUT}, "abc"),
    "sum_plain": ("sum", {"out_dim": OUT, "mean": False}, "abc"),  # the plain sum
    "weighted": ("weighted", {"out_dim": OUT}, "abc"),
    "gated": ("gated", {"out_dim": OUT}, "abc"),
    "gated_sigmoid": ("gated", {"out_dim": OUT, "gate": "sigmoid"}, "ab"),
    "gated_paper": ("gated", {"out_dim": OUT, "normalize": False}, "abc"),  # the published GMU
    "film": ("film", {"out_dim": OUT}, "abc"),
    "film_target": ("film", {"out_dim": OUT, "target": "c"}, "abc"),
    "film_paper": ("film", {"out_dim": OUT, "normalize": False}, "abc"),  # the published formula
    # normalize=False: the papers' TFN / LMF formulas; the *_norm cases add the default output LayerNorm.
    "tensor": ("tensor", {"out_dim": OUT, "normalize": False}, "abc"),
    "tensor_pre": ("tensor", {"out_dim": OUT, "pre_dim": 2, "normalize": False}, "abc"),
    "tensor_norm": ("tensor", {"out_dim": OUT}, "abc"),
    "low_rank": ("low_rank", {"out_dim": OUT, "rank": 3, "normalize": False}, "abc"),
    "low_rank_norm": ("low_rank", {"out_dim": OUT, "rank": 3}, "abc"),
    "bilinear": ("bilinear", {"out_dim": OUT, "factor_dim": 2}, "ab"),
    "bilinear_proj": ("bilinear", {"out_dim": OUT, "factor_dim": 2, "pair_dim": 3}, "abc"),
    "bilinear_concat": ("bilinear", {"out_dim": 6, "factor_dim": 2, "pair_dim": 2}, "abc"),
    "late_mean": ("late", {"out_dim": OUT}, "abc"),
    "late_learned": ("late", {"out_dim": OUT, "combine": "learned", "hidden_dim": 4}, "abc"),
}
# One representative config per block for the 2- and 4-modality and dtype checks.
MAIN = ["concat_proj", "sum", "weighted", "gated", "film", "tensor", "low_rank", "bilinear_proj", "late_learned"]


def make_features(mods, seed, tokens=TOKENS):
    rng = np.random.default_rng(seed)
    out = {}
    for m in mods:
        shape = (B, tokens[m], DIMS[m]) if m in tokens else (B, DIMS[m])
        out[m] = rng.normal(size=shape).astype(np.float32)
    return out


def all_present(mods):
    return {m: np.ones(B, bool) for m in mods}


def some_missing(mods):
    """Example 1 misses the first modality, example 2 the last, example 3 all."""
    mask = all_present(mods)
    mask[mods[0]][1] = False
    mask[mods[-1]][2] = False
    for m in mods:
        mask[m][3] = False
    return mask


def random_params(block, feats, mask, seed=1, dtype=np.float32):
    """Params of ``block`` filled with N(0, 0.5^2) numpy draws.

    Compiling the real (truncated-normal) initialisers for every case would
    dominate this file's run time; only their shapes are traced here. Random values (not
    zeros) also give non-uniform modality logits, a stronger test.
    """
    shapes = nn.unbox(jax.eval_shape(block.init, jax.random.key(0), feats, mask)).get("params", {})
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: (0.5 * rng.normal(size=s.shape)).astype(dtype), shapes)


class Case:
    """A block, its params and its jitted functions, built once per module.

    ``with_grad`` cases compile forward and backward together (one compile
    serves the reference, mask and gradient tests); the others compile the
    forward only.
    """

    def __init__(self, name, config, mods, tokens=TOKENS, dtype=jnp.float32, with_grad=False):
        self.name, self.config, self.mods = name, config, tuple(mods)
        self.tokens = tokens
        self.block = F.create(name, dtype=dtype, **config)
        feats = make_features(mods, 0, tokens)
        self.boxed = jax.eval_shape(self.block.init, jax.random.key(0), feats, all_present(mods))
        self.params = random_params(self.block, feats, all_present(mods))
        self.apply = jax.jit(lambda p, x, m: self.block.apply({"params": p}, x, m))
        self.with_grad = with_grad
        out = jax.eval_shape(self.block.apply, {"params": self.params}, feats, all_present(mods))
        # A random cotangent: sum(y) or sum(y**2) would hide gradients (e.g.
        # after L2 normalisation or a softmax over modalities).
        probe = np.random.default_rng(7).normal(size=out.shape).astype(np.float32)

        def fwd_bwd(p, x, m):
            y, vjp = jax.vjp(lambda p: self.block.apply({"params": p}, x, m), p)
            return y, vjp(jnp.asarray(probe, y.dtype))[0]

        self.fwd_bwd = jax.jit(fwd_bwd)

    def __call__(self, feats, mask):
        y = self.fwd_bwd(self.params, feats, mask)[0] if self.with_grad else self.apply(self.params, feats, mask)
        return np.asarray(y, np.float64)

    def grads(self, feats, mask):
        return self.fwd_bwd(self.params, feats, mask)[1]


@functools.lru_cache(maxsize=None)
def get_case(case_id, mods=None, tokens=tuple(TOKENS.items()), dtype="float32"):
    name, config, default_mods = CASES[case_id]
    default = mods is None and dtype == "float32" and tokens == tuple(TOKENS.items())
    return Case(name, config, mods or default_mods, dict(tokens), getattr(jnp, dtype), with_grad=default)


# ---------------------------------------------------------------- numpy references


def np_pooled(feats, mask):
    out = {}
    for m, x in feats.items():
        x = np.asarray(x, np.float64)
        p = x.mean(axis=1) if x.ndim == 3 else x
        out[m] = np.where(mask[m][:, None], p, 0.0)
    return out


def lin(p, x):
    return x @ np.asarray(p["kernel"], np.float64) + np.asarray(p["bias"], np.float64)


def np_softmax_present(logits, present, axis):
    e = np.exp(logits - logits.max(axis=axis, keepdims=True)) * present
    s = e.sum(axis=axis, keepdims=True)
    return np.where(s > 0, e / np.where(s > 0, s, 1), 0.0)


def np_output_norm(cfg, P, z):
    """tensor / low_rank: LayerNorm (eps 1e-6, params ``norm``) of the output unless normalize=False."""
    if not cfg.get("normalize", True):
        return z
    mu, var = z.mean(-1, keepdims=True), z.var(-1, keepdims=True)
    return (z - mu) / np.sqrt(var + 1e-6) * P["norm"]["scale"] + P["norm"]["bias"]


def reference(case_id, params, feats, mask):
    name, cfg, _ = CASES[case_id]
    z = np_pooled(feats, mask)
    names = sorted(z)
    pr = np.stack([mask[n] for n in names], 1).astype(np.float64)  # (B, M)
    P = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
    if name == "concat":
        cat = np.concatenate([z[n] for n in names], -1)
        return lin(P["proj"], cat) if cfg["out_dim"] else cat
    if name in ("sum", "weighted"):
        v = np.stack([lin(P[f"proj_{n}"], z[n]) for n in names], 1)
        if name == "sum":
            count = np.maximum(pr.sum(1), 1)[:, None] if cfg.get("mean", True) else 1.0  # default: the mean
            return (v * pr[..., None]).sum(1) / count
        w = np_softmax_present(np.broadcast_to(P["modality_logits"], pr.shape), pr, 1)
        return (w[..., None] * v).sum(1)
    if name == "gated":
        if cfg.get("normalize", True):  # the default: each input at zero mean, unit variance (no params)
            z = {n: (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6) for n, x in z.items()}
        h = np.stack([np.tanh(lin(P[f"hidden_{n}"], z[n])) for n in names], 1)
        g = lin(P["gate"], np.concatenate([z[n] for n in names], -1))
        if cfg.get("gate") == "sigmoid":
            s = 1 / (1 + np.exp(-g))
            g1 = np.where(pr[:, :1] * pr[:, 1:] > 0, s, pr[:, :1])
            g2 = np.where(pr[:, :1] * pr[:, 1:] > 0, 1 - s, pr[:, 1:])
            return g1 * h[:, 0] + g2 * h[:, 1]
        g = np_softmax_present(g.reshape(B, len(names), -1), pr[..., None], 1)
        return (g * h).sum(1)
    if name == "film":
        t = cfg.get("target") or names[0]
        xc = np.concatenate([z[n] for n in names if n != t], -1)
        out = (1 + lin(P["gamma"], xc)) * lin(P["base"], z[t]) + lin(P["beta"], xc)
        if cfg.get("normalize", True):  # the default: zero mean, unit variance over out_dim (no params)
            out = (out - out.mean(-1, keepdims=True)) / np.sqrt(out.var(-1, keepdims=True) + 1e-6)
        return out
    if name == "tensor":
        hs = [z[n] for n in names]
        if cfg.get("pre_dim"):
            hs = [lin(P[f"pre_{n}"], z[n]) * mask[n][:, None] for n in names]
        aug = [np.concatenate([np.ones((B, 1)), h], -1) for h in hs]
        flat = np.stack([functools.reduce(np.multiply.outer, [a[i] for a in aug]).ravel() for i in range(B)])
        W = P["kernel"]
        return np_output_norm(cfg, P, flat @ W.reshape(-1, W.shape[-1]) + P["bias"])
    if name == "low_rank":
        out = 0.0
        for i in range(cfg["rank"]):
            prod = 1.0
            for n in names:
                # The paper's augmented factor (r, d + 1, out) from the stored bias row and U.
                factor = np.concatenate([P[f"factor_bias_{n}"][:, None], P[f"factor_{n}"].transpose(1, 0, 2)], 1)
                a = np.concatenate([np.ones((B, 1)), z[n]], -1)
                prod = prod * (a @ factor[i])
            out = out + P["fusion_weights"][0, i] * prod
        return np_output_norm(cfg, P, out + P["fusion_bias"])
    if name == "bilinear":
        k, eps = cfg["factor_dim"], 1e-8
        o = cfg.get("pair_dim") or cfg["out_dim"]
        outs = []
        for a, b in itertools.combinations(names, 2):
            p = lin(P[f"U_{a}_{b}"], z[a]) * lin(P[f"V_{a}_{b}"], z[b])
            s = p.reshape(B, o, k).sum(-1)
            s = np.sign(s) * (np.sqrt(np.abs(s) + eps) - np.sqrt(eps))
            s = s / np.maximum(np.linalg.norm(s, axis=-1, keepdims=True), np.sqrt(eps))
            outs.append(s * (mask[a] & mask[b])[:, None])
        cat = np.concatenate(outs, -1)
        return lin(P["proj"], cat) if cat.shape[-1] != cfg["out_dim"] else cat
    if name == "late":
        logits = []
        for n in names:
            h = z[n]
            if cfg.get("hidden_dim"):
                h = lin(P[f"hidden_{n}"], h)
                h = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3)))  # tanh-GELU
            logits.append(lin(P[f"head_{n}"], h))
        logits = np.stack(logits, 1)
        if cfg.get("combine") == "learned":
            w = np_softmax_present(np.broadcast_to(P["modality_logits"], pr.shape), pr, 1)
        else:
            w = pr / np.maximum(pr.sum(1, keepdims=True), 1)
        return (w[..., None] * logits).sum(1)
    raise AssertionError(case_id)


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("case_id", list(CASES))
def test_matches_numpy_reference_with_missing_modalities(case_id):
    case = get_case(case_id)
    feats, mask = make_features(case.mods, 2), some_missing(case.mods)
    got = case(feats, mask)
    want = reference(case_id, case.params, feats, mask)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
    feats_full = make_features(case.mods, 3)
    np.testing.assert_allclose(
        case(feats_full, all_present(case.mods)),
        reference(case_id, case.params, feats_full, all_present(case.mods)),
        rtol=2e-5, atol=2e-5,
    )


@pytest.mark.parametrize("case_id", list(CASES))
def test_masked_garbage_changes_nothing(case_id):
    case = get_case(case_id)
    feats, mask = make_features(case.mods, 4), some_missing(case.mods)
    clean = case(feats, mask)
    dirty = {m: x.copy() for m, x in feats.items()}
    for m in case.mods:
        dirty[m][~mask[m]] = np.nan
    out = case(dirty, mask)
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out, clean)
    # The backward pass is NaN-free too (jnp.where, not a multiply, zeroes them).
    for g in jax.tree.leaves(case.grads(dirty, mask)):
        assert np.isfinite(np.asarray(g)).all(), case_id
    # Masking one example's modality leaves the other examples' outputs unchanged.
    full = case(feats, all_present(case.mods))
    one = all_present(case.mods)
    one[case.mods[0]][0] = False
    np.testing.assert_allclose(case(feats, one)[1:], full[1:], rtol=1e-6, atol=1e-6)


def test_no_modality_present_gives_zero_where_documented():
    for case_id in ["sum", "sum_plain", "weighted", "gated", "gated_sigmoid", "late_mean", "late_learned", "bilinear"]:
        case = get_case(case_id)
        out = case(make_features(case.mods, 5), some_missing(case.mods))
        np.testing.assert_array_equal(out[3], 0.0, err_msg=case_id)


@pytest.mark.parametrize("case_id", list(CASES))
def test_gradient_reaches_every_parameter(case_id):
    case = get_case(case_id)
    if not jax.tree.leaves(case.params):
        pytest.skip("no parameters")
    feats = make_features(case.mods, 6)
    mask = all_present(case.mods)
    mask[case.mods[-1]][0] = False  # one example with a modality missing
    grads = case.grads(feats, mask)
    assert jax.tree.structure(grads) == jax.tree.structure(case.params)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        g = np.asarray(g)
        assert np.isfinite(g).all(), (case_id, jax.tree_util.keystr(path))
        assert np.abs(g).max() > 0, (case_id, jax.tree_util.keystr(path))
    if case.name == "low_rank":
        assert all(f"factor_{m}" in grads and f"factor_bias_{m}" in grads for m in case.mods)


@pytest.mark.parametrize("case_id", ["tensor", "low_rank", "bilinear"])
def test_finite_difference_gradients_float64(case_id):
    name, cfg, mods = CASES[case_id]
    with jax.enable_x64(True):
        block = F.create(name, dtype=jnp.float64, param_dtype=jnp.float64, **cfg)
        feats = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), make_features(mods, 8))
        mask = some_missing(mods)
        for m in mods:  # keep one example with every modality present
            mask[m][3] = True
        params = jax.tree.map(jnp.asarray, random_params(block, feats, mask, seed=2, dtype=np.float64))
        probe = jnp.asarray(np.random.default_rng(9).normal(size=(B, cfg["out_dim"])))

        @jax.jit
        def f(p, x):
            return jnp.sum(block.apply({"params": p}, x, mask) * probe)

        jax.test_util.check_grads(f, (params, feats), order=1, modes=("rev",), eps=1e-6, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("case_id", MAIN)
def test_two_pooled_modalities(case_id):
    case = get_case(case_id, "ab", ())
    feats, mask = make_features("ab", 10, {}), some_missing("ab")
    np.testing.assert_allclose(case(feats, mask), reference(case_id, case.params, feats, mask), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("case_id", MAIN)
def test_four_token_modalities_under_vmap(case_id):
    """vmap over a leading axis of two batches, each against the numpy formula."""
    mods, tokens = "abcd", {"a": 2, "b": 3, "c": 1, "d": 2}
    case = get_case(case_id, mods, tuple(tokens.items()))
    f1, f2 = make_features(mods, 12, tokens), make_features(mods, 13, tokens)
    m1, m2 = some_missing(mods), all_present(mods)
    stacked = jax.tree.map(lambda x, y: np.stack([x, y]), f1, f2)
    masks = jax.tree.map(lambda x, y: np.stack([x, y]), m1, m2)
    out = np.asarray(jax.jit(jax.vmap(case.apply, in_axes=(None, 0, 0)))(case.params, stacked, masks))
    np.testing.assert_allclose(out[0], reference(case_id, case.params, f1, m1), rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(out[1], reference(case_id, case.params, f2, m2), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("case_id", MAIN)
def test_bfloat16_compute_close_to_float32(case_id):
    f32 = get_case(case_id)
    b16 = get_case(case_id, dtype="bfloat16")
    assert jax.tree.all(jax.tree.map(lambda x: x.dtype == jnp.float32, b16.params))
    feats, mask = make_features(f32.mods, 11), some_missing(f32.mods)
    y16 = b16.apply(f32.params, feats, mask)  # same f32 params, bf16 compute
    assert y16.dtype == jnp.bfloat16
    y32 = f32(feats, mask)
    y16 = np.asarray(y16, np.float64)
    assert np.isfinite(y16).all()
    scale = np.abs(y32).max() + 1e-6
    assert np.abs(y16 - y32).max() / scale < 0.08, case_id


def test_weights_carry_logical_axis_names():
    for case_id in CASES:
        case = get_case(case_id)
        boxes = jax.tree.leaves(case.boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
        for box in boxes:
            assert isinstance(box, nn.LogicallyPartitioned), (case_id, type(box))
            assert len(box.names) == box.value.ndim
            assert any(isinstance(n, str) for n in box.names), (case_id, box.names)


def test_low_rank_factors_are_params_with_rank_axis():
    case = get_case("low_rank")
    for m in case.mods:
        assert case.params[f"factor_{m}"].shape == (DIMS[m], 3, OUT)
        assert case.params[f"factor_bias_{m}"].shape == (3, OUT)
    assert case.params["fusion_weights"].shape == (1, 3)


def test_tensor_plan_avoids_the_full_outer_product():
    from mmjax.fusion.tensor import tfn_plan

    s, rest = tfn_plan([33, 33, 33], 64)
    assert len(s) == 2 and len(rest) == 1
    # Small output: materialising the (tiny) outer product is cheapest.
    assert tfn_plan([3, 3], 64)[1] == ()
    # One big modality and a narrow output: contract mode by mode, largest first.
    assert tfn_plan([101, 3, 4], 2) == ((0,), (2, 1))


def test_bad_config_errors():
    feats = make_features("abc", 0)
    for name, cfg, match in [
        ("film", {"target": "zz"}, "target='zz'"),
        ("gated", {"gate": "sigmoid"}, "sigmoid.*exactly 2"),
        ("gated", {"gate": "relu"}, "gate"),
        ("late", {"combine": "max"}, "combine"),
        ("low_rank", {"rank": 0}, "rank"),
        ("bilinear", {"factor_dim": 0}, "factor_dim"),
    ]:
        # The block's own checks (F.create range-checks sizes before: test_base.py).
        with pytest.raises(F.FusionInputError, match=match):
            jax.eval_shape(FUSION.get(name)(out_dim=2, **cfg).init, jax.random.key(0), feats)
