"""Catalogue A (issue 20): TorchMultimodal's and MultiBench's fusions against numpy formulas.

attention_fusion, deepset, deepset_transformer, multiplicative, nl_gate,
stack, early_transformer, late_transformer: each against its float64 numpy
formula (``_catalogue_a_numpy.py``) with the same random weights, with and
without missing modalities; NaN garbage in masked slots; gradients reaching
every parameter; bf16 compute; 2 to 4 modalities; the refusals.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mmjax.fusion as F
from mmjax.errors import ConfigError
from mmjax.fusion.attention import AttentionConfigError
from _catalogue_a_numpy import layer_norm as numpy_layer_norm, reference

B, OUT = 4, 6
DIMS = {"a": 3, "b": 4, "c": 2, "d": 3}
TOKENS = {"b": 3}  # "b" comes as (B, 3, 4) tokens, the others pooled
ALIGNED = {"a": 2, "b": 2, "c": 2, "d": 2}
EQUAL = {"a": 3, "b": 3, "c": 3, "d": 3}
TINY = {"dim": 4, "num_heads": 2}
# A per-modality transformer over one token (or a token and its own mean) has a constant
# softmax, so its q/k weights get no gradient: the late blocks see real sequences.
SEQS = {"a": 2, "b": 3, "c": 2, "d": 2}

CASES = {
    # case id: (block, config, modalities, token lengths, dims)
    "attention_fusion": ("attention_fusion", {"out_dim": OUT}, "abc", TOKENS, DIMS),
    "attention_fusion_min": ("attention_fusion", {}, "ab", TOKENS, DIMS),
    "deepset_sum": ("deepset", {"out_dim": OUT, "hidden_dims": (5,)}, "abc", TOKENS, DIMS),
    "deepset_mean_attn": ("deepset", {"out_dim": OUT, "pooling": "mean", "apply_attention": True,
                                      "modality_normalize": True}, "abc", TOKENS, DIMS),
    "deepset_max": ("deepset", {"out_dim": OUT, "pooling": "max", "proj_dim": 3, "norm_factor": 1.5}, "abc",
                    TOKENS, DIMS),
    "deepset_identity": ("deepset", {"out_dim": OUT, "project": False}, "abc", {}, EQUAL),
    "deepset_transformer": ("deepset_transformer", {"out_dim": OUT, "proj_dim": 4, "num_heads": 2,
                                                    "num_layers": 2, "hidden_dims": (5,)}, "abc", TOKENS, DIMS),
    "mi_matrix": ("multiplicative", {"out_dim": OUT}, "abc", TOKENS, DIMS),
    "mi_vector": ("multiplicative", {"out_dim": OUT, "output": "vector", "normalize": False}, "abc", TOKENS, DIMS),
    "mi_scalar_flip": ("multiplicative", {"out_dim": OUT, "output": "scalar", "order": ("b", "a")}, "ab",
                       TOKENS, DIMS),
    "nl_gate": ("nl_gate", {"out_dim": OUT}, "ab", {"a": 2, "b": 3}, DIMS),
    "nl_gate_kv": ("nl_gate", {"out_dim": OUT, "query": "b", "dim": 3, "kv_tokens": 2}, "ab", TOKENS, DIMS),
    "stack": ("stack", {"out_dim": OUT}, "abc", ALIGNED, DIMS),
    "stack_pooled": ("stack", {"out_dim": OUT, "inputs": "pooled"}, "abc", {}, EQUAL),
    "early": ("early_transformer", {"out_dim": OUT, **TINY, "num_layers": 2, "pos_emb": True}, "abc", TOKENS, DIMS),
    "early_pooled_token": ("early_transformer", {"out_dim": OUT, **TINY, "pooled_token": True,
                                                 "readout": "pooled_token"}, "abc", TOKENS, DIMS),
    "late": ("late_transformer", {"out_dim": OUT, **TINY, "pos_emb": True}, "abc", SEQS, DIMS),
    "late_pooled_token": ("late_transformer", {"out_dim": OUT, **TINY, "pooled_token": True,
                                               "readout": "pooled_token"}, "abc", SEQS, DIMS),
}
# Any number of modalities: checked with 2 and 4 as well.
MANY = ["attention_fusion", "deepset_mean_attn", "deepset_transformer", "mi_matrix", "mi_vector", "stack",
        "early", "late"]
BF16 = ["attention_fusion", "deepset_sum", "deepset_transformer", "mi_matrix", "nl_gate", "stack", "early", "late"]


def make_features(mods, seed, tokens, dims):
    rng = np.random.default_rng(seed)
    return {m: rng.normal(size=(B, tokens[m], dims[m]) if m in tokens else (B, dims[m])).astype(np.float32)
            for m in mods}


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


class Case:
    """A block, N(0, 0.5^2) numpy params (only shapes are traced) and one jitted forward+backward."""

    def __init__(self, case_id, mods, dtype):
        name, self.config, default_mods, self.tokens, self.dims = CASES[case_id]
        self.name, self.mods = name, tuple(mods or default_mods)
        self.block = F.create(name, dtype=dtype, **self.config)
        feats = self.features(0)
        self.boxed = jax.eval_shape(self.block.init, jax.random.key(0), feats, all_present(self.mods))
        rng = np.random.default_rng(1)
        self.params = jax.tree.map(lambda s: (0.5 * rng.normal(size=s.shape)).astype(np.float32),
                                   nn.unbox(self.boxed)["params"])
        out = jax.eval_shape(self.block.apply, {"params": self.params}, feats, all_present(self.mods))
        probe = np.random.default_rng(7).normal(size=out.shape).astype(np.float32)

        def fwd_bwd(p, x, m):
            y, vjp = jax.vjp(lambda p: self.block.apply({"params": p}, x, m), p)
            return y, vjp(jnp.asarray(probe, y.dtype))[0]

        self.fwd_bwd = jax.jit(fwd_bwd)

    def features(self, seed):
        return make_features(self.mods, seed, self.tokens, self.dims)

    def __call__(self, feats, mask):
        return self.fwd_bwd(self.params, feats, mask)[0]

    def reference(self, feats, mask):
        return reference(self.name, self.params, self.config, feats, mask)


@functools.lru_cache(maxsize=None)
def get_case(case_id, mods=None, dtype="float32"):
    return Case(case_id, mods, getattr(jnp, dtype))


def assert_close(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * (np.abs(want).max() + 1e-3))


@pytest.mark.parametrize("case_id", list(CASES))
def test_matches_numpy_formula(case_id):
    case = get_case(case_id)
    for seed, mask in [(2, some_missing(case.mods)), (3, all_present(case.mods))]:
        feats = case.features(seed)
        want = case.reference(feats, mask)
        assert np.abs(want).max() > 1e-2  # a degenerate all-zero output would agree trivially
        assert_close(case(feats, mask), want)


@pytest.mark.parametrize("case_id", list(CASES))
def test_masked_garbage_changes_nothing_and_gradients_reach_every_parameter(case_id):
    case = get_case(case_id)
    feats, mask = case.features(4), some_missing(case.mods)
    clean = np.asarray(case(feats, mask))
    dirty = {m: x.copy() for m, x in feats.items()}
    for m in case.mods:
        dirty[m][~mask[m]] = np.nan
    y, grads = case.fwd_bwd(case.params, dirty, mask)
    np.testing.assert_array_equal(np.asarray(y), clean)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        g = np.asarray(g)
        assert np.isfinite(g).all(), (case_id, jax.tree_util.keystr(path))
        if jax.tree_util.keystr(path).endswith("['key']['bias']"):
            continue  # q . b_k shifts a whole softmax row: its gradient is 0 up to rounding
        assert np.abs(g).max() > 0, (case_id, jax.tree_util.keystr(path))
    # Masking one example's modality leaves the other examples' outputs unchanged.
    full = np.asarray(case(feats, all_present(case.mods)))
    one = all_present(case.mods)
    one[case.mods[0]][0] = False
    np.testing.assert_allclose(np.asarray(case(feats, one))[1:], full[1:], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("case_id", MANY)
@pytest.mark.parametrize("mods", ["ab", "abcd"])
def test_two_and_four_modalities(case_id, mods):
    case = get_case(case_id, mods)
    feats, mask = case.features(5), some_missing(case.mods)
    assert_close(case(feats, mask), case.reference(feats, mask))


@pytest.mark.parametrize("case_id", BF16)
def test_bfloat16_compute_close_to_float32(case_id):
    f32, b16 = get_case(case_id), get_case(case_id, dtype="bfloat16")
    feats, mask = f32.features(6), some_missing(f32.mods)
    y16 = b16(feats, mask)  # the f32 case's params (the same draws), bf16 compute
    assert y16.dtype == jnp.bfloat16
    y16, y32 = np.asarray(y16, np.float64), np.asarray(f32(feats, mask), np.float64)
    assert np.isfinite(y16).all()
    assert np.abs(y16 - y32).max() / (np.abs(y32).max() + 1e-6) < 0.08, case_id


def test_documented_mask_semantics():
    # attention_fusion: no modality present -> zeros; a lone present modality gets weight 1.
    case = get_case("attention_fusion")
    feats, mask = case.features(8), some_missing(case.mods)
    y = np.asarray(case(feats, mask))
    np.testing.assert_array_equal(y[3], 0.0)
    lone = {m: np.array([m == "b"] * B) for m in case.mods}
    proj = case.params["proj_b"]
    assert_close(np.asarray(case(feats, lone)), feats["b"].astype(np.float64).mean(1) @ proj["kernel"] + proj["bias"])
    # nl_gate: a missing gating modality leaves the query ungated, g = q.
    case = get_case("nl_gate")
    feats = case.features(9)
    mask = {"a": np.ones(B, bool), "b": np.zeros(B, bool)}
    q = feats["a"].reshape(B, -1).astype(np.float64)
    out = case.params["out"]
    assert_close(np.asarray(case(feats, mask)), q @ out["kernel"] + out["bias"])
    # multiplicative: a missing input y leaves the context's own term x U + b (then the LayerNorm).
    case = get_case("mi_matrix", "ab")
    feats = case.features(10)
    x = feats["a"].astype(np.float64)
    p = case.params
    want = numpy_layer_norm(p["norm"], x @ p["link_1_U"] + p["link_1_b"])
    assert_close(np.asarray(case(feats, {"a": np.ones(B, bool), "b": np.zeros(B, bool)})), want)


def _init(name, feats, **cfg):
    return jax.eval_shape(F.create(name, **cfg).init, jax.random.key(0), feats)


def test_refusals_are_one_line_fusion_input_errors():
    pooled3 = make_features("abc", 0, {}, DIMS)
    for name, feats, cfg, match in [
        ("nl_gate", pooled3, {"out_dim": 2}, "exactly 2 modalities"),
        ("nl_gate", make_features("ab", 0, {}, DIMS), {"query": "z"}, "query='z'"),
        ("stack", make_features("ab", 0, {"a": 2, "b": 3}, DIMS), {}, "equal lengths"),
        ("stack", pooled3, {"inputs": "pooled"}, "equal widths"),
        ("stack", pooled3, {"inputs": "rows"}, "inputs must be"),
        ("multiplicative", pooled3, {"out_dim": 2, "output": "tensor"}, "output must be"),
        ("multiplicative", pooled3, {"out_dim": 2, "order": ("a", "b")}, "not a permutation"),
        ("deepset", pooled3, {"out_dim": 2, "pooling": "median"}, "pooling"),
        ("deepset", pooled3, {"out_dim": 2, "project": False}, "equal modality widths"),
        ("deepset_transformer", pooled3, {"out_dim": 2, "proj_dim": 3, "num_heads": 2}, "divisible"),
    ]:
        with pytest.raises(F.FusionInputError, match=match) as err:
            _init(name, feats, **cfg)
        assert "\n" not in str(err.value)


def test_transformer_config_refusals_are_the_attention_blocks_config_errors():
    pooled3 = make_features("abc", 0, {}, DIMS)
    for name, cfg, match in [
        ("early_transformer", {"out_dim": 2, "dim": 6, "num_heads": 4}, "early_transformer: dim=6 is not divisible"),
        ("late_transformer", {"out_dim": 2, "readout": "pooled_token"}, "late_transformer: readout='pooled_token'"),
        ("late_transformer", {"out_dim": 2, "readout": "max"}, "late_transformer: readout must be"),
    ]:
        with pytest.raises(AttentionConfigError, match=match) as err:
            _init(name, feats=pooled3, **cfg)
        assert isinstance(err.value, ConfigError) and "\n" not in str(err.value)


def test_weights_carry_logical_axis_names():
    for case_id in CASES:
        boxes = jax.tree.leaves(get_case(case_id).boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
        for box in boxes:
            assert isinstance(box, nn.LogicallyPartitioned), (case_id, type(box))
            assert len(box.names) == box.value.ndim, (case_id, box.names)
