"""Attention fusion blocks (cross_attention, bottleneck, perceiver) against plain numpy.

The numpy references work one example at a time on the *real* tokens only
(padding dropped, a missing modality is an empty sequence) and spell out the
missing-modality rules directly, so they check the masking tricks of the JAX
code as well as the math.
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mmjax.fusion as F
from mmjax.fusion.registry import FUSION
from mmjax.fusion.attention import AttentionConfigError
from mmjax.types import Encoded

DIM, HEADS, MLP_DIM, OUT = 8, 2, 12, 5


def jit(fn):
    """jax.jit without XLA's backend optimisations: these tiny programs are
    compile-bound on CPU, and the optimisations do not change the numbers."""
    jitted, cache = jax.jit(fn), {}

    def call(*args):
        leaves, tree = jax.tree.flatten(args)
        key = (tree, tuple((np.shape(x), np.result_type(x)) for x in leaves))
        if key not in cache:
            cache[key] = jitted.lower(*args).compile(compiler_options={"xla_backend_optimization_level": 0})
        return cache[key](*args)

    return call


# ----------------------------------------------------------------- numpy ---
def np_ln(p, x, eps=1e-6):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def np_gelu(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def np_mha(p, xq, xkv):
    """(T, D), (S, D) -> (T, D); every key real."""
    q = np.einsum("td,dnh->tnh", xq, p["query"]["kernel"]) + p["query"]["bias"]
    k = np.einsum("sd,dnh->snh", xkv, p["key"]["kernel"]) + p["key"]["bias"]
    v = np.einsum("sd,dnh->snh", xkv, p["value"]["kernel"]) + p["value"]["bias"]
    logits = np.einsum("tnh,snh->nts", q, k) / np.sqrt(q.shape[-1])
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    o = np.einsum("nts,snh->tnh", w, v)
    return np.einsum("tnh,nhd->td", o, p["out"]["kernel"]) + p["out"]["bias"]


def np_mlp(p, x):
    h = np_gelu(x @ p["fc1"]["kernel"] + p["fc1"]["bias"])
    return h @ p["fc2"]["kernel"] + p["fc2"]["bias"]


def np_self_block(p, x):
    h = np_ln(p["ln_attn"], x)
    x = x + np_mha(p["self_attn"], h, h)
    return x + np_mlp(p["mlp"], np_ln(p["ln_mlp"], x))


def np_cross_block(p, x, ctx):
    """ctx (S, D); S == 0 means no source: no attention update."""
    if len(ctx):
        x = x + np_mha(p["cross_attn"], np_ln(p["ln_q"], x), np_ln(p["ln_kv"], ctx))
    return x + np_mlp(p["mlp"], np_ln(p["ln_mlp"], x))


def np_project(p, tokens, masks, e, pos_emb):
    """Real tokens of example e, projected: name -> (T_real, DIM)."""
    out = {}
    for n in sorted(tokens):
        keep = masks[n][e]
        x = tokens[n][e][keep] @ p[f"proj_{n}"]["kernel"] + p[f"proj_{n}"]["bias"]
        if pos_emb:
            x = x + p[f"pos_emb_{n}"][keep]
        out[n] = x
    return out


def np_cross_attention(p, tokens, masks, num_layers, pos_emb, first=False):
    names = sorted(tokens)
    outs = []
    for e in range(len(masks[names[0]])):
        x = np_project(p, tokens, masks, e, pos_emb)
        pooled = []
        for a in names:
            slots = []
            for b in names:
                if b == a:
                    continue
                if len(x[b]) == 0:
                    slots.append(np.zeros((len(x[a]), DIM)))
                    continue
                h = x[a]
                for i in range(num_layers):
                    h = np_cross_block(p[f"{a}_from_{b}_{i}"], h, x[b])
                slots.append(np_ln(p[f"{a}_from_{b}_norm"], h))
            t = np.concatenate(slots, -1)
            pooled.append((t[0] if first else t.mean(0)) if len(t) else np.zeros(t.shape[-1]))
        outs.append(np.concatenate(pooled) @ p["out"]["kernel"] + p["out"]["bias"])
    return np.stack(outs)


def np_bottleneck(p, tokens, masks, num_layers, fusion_layer, share, first=False):
    names = sorted(tokens)
    outs = []
    for e in range(len(masks[names[0]])):
        x = np_project(p, tokens, masks, e, False)
        present = [n for n in names if len(x[n])]
        bn = p.get("bottleneck")
        blk = lambda n, i: p[f"layer_{i}"] if share else p[f"{n}_layer_{i}"]  # noqa: E731
        for i in range(num_layers):
            if i < fusion_layer:
                for n in present:
                    x[n] = np_self_block(blk(n, i), x[n])
                continue
            new = []
            for n in present:
                t = len(x[n])
                out = np_self_block(blk(n, i), np.concatenate([x[n], bn]))
                x[n], _ = out[:t], new.append(out[t:])
            if new:
                bn = np.mean(new, axis=0)
        pooled = [np_ln(p["ln_final"] if share else p[f"{n}_ln_final"], x[n]) for n in present]
        pooled = [y[0] if first else y.mean(0) for y in pooled]
        z = np.mean(pooled, axis=0) if pooled else np.zeros(DIM)
        outs.append(z @ p["out"]["kernel"] + p["out"]["bias"])
    return np.stack(outs)


def np_perceiver(p, tokens, masks, num_layers, num_self_layers, share, first=False):
    names = sorted(tokens)
    outs = []
    for e in range(len(masks[names[0]])):
        x = np_project(p, tokens, masks, e, False)
        byte = np.concatenate([x[n] + p[f"modality_emb_{n}"] for n in names])
        z = p["latents"]
        for r in range(num_layers):
            j = 0 if share else r
            z = np_cross_block(p[f"cross_{j}"], z, byte)
            for s in range(num_self_layers):
                z = np_self_block(p[f"self_{j}_{s}"], z)
        z = np_ln(p["ln_final"], z).mean(0)
        if first:  # readout="pooled_token": each present modality's first (pooled) token joins the head
            z = np.concatenate([z] + [np_ln(p[f"ln_pooled_{n}"], x[n][0]) if len(x[n]) else np.zeros(DIM)
                                      for n in names])
        outs.append(z @ p["out"]["kernel"] + p["out"]["bias"])
    return np.stack(outs)


def np_with_pooled_token(tokens, masks, mm):
    """numpy ``with_pooled_token``: the given pooled vector (mean of all T rows; the one row of a
    pooled input) prepended to the tokens, real where the modality is present."""
    out_t, out_m = {}, {}
    for n in tokens:
        pooled = tokens[n].mean(1, keepdims=True) * np.asarray(mm[n])[:, None, None]
        out_t[n] = np.concatenate([pooled, tokens[n]], 1)
        out_m[n] = np.concatenate([np.asarray(mm[n])[:, None], masks[n]], 1)
    return out_t, out_m


# ------------------------------------------------------------------ data ---
def make_inputs(dims, lengths, batch=3, seed=0, missing=(), padded=()):
    """Token features as Encoded with masks; ``missing``: (name, example) pairs,
    ``padded``: (name, example, n_pad) pairs. A length of 0 means a pooled (B, D) input."""
    rng = np.random.default_rng(seed)
    feats, tokens, masks, mm = {}, {}, {}, {}
    for n, d in dims.items():
        t = lengths[n]
        x = rng.normal(size=(batch, max(t, 1), d)).astype(np.float32)
        mask = np.ones((batch, max(t, 1)), bool)
        for name, e, k in padded:
            if name == n:
                mask[e, -k:] = False
        present = np.ones(batch, bool)
        for name, e in missing:
            if name == n:
                present[e] = False
        tokens[n], masks[n], mm[n] = x, mask & present[:, None], present
        if t == 0:
            feats[n] = jnp.asarray(x[:, 0])
        else:
            feats[n] = Encoded(pooled=jnp.asarray(x.mean(1)), tokens=jnp.asarray(x), mask=jnp.asarray(mask))
    return feats, tokens, masks, {n: jnp.asarray(v) for n, v in mm.items()}


def params_np(variables):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), nn.unbox(variables["params"]))


def random_variables(block, *args, seed=0):
    """Parameters of ``block`` with the init's structure and logical boxes, drawn
    in numpy (no compiled init: XLA takes seconds to compile an RNG-heavy init
    on CPU). Random LayerNorm scales and biases exercise those too."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(block.init, jax.random.key(0), *args)
    return jax.tree.map(lambda s: jnp.asarray(0.4 * rng.normal(size=s.shape), s.dtype), shapes)


def init_apply(block, feats, mm):
    variables = random_variables(block, feats, mm)
    return variables, np.asarray(jit(block.apply)(variables, feats, mm))


# ----------------------------------------------------- numpy equivalence ---
@pytest.mark.parametrize(
    "dims,lengths,pos_emb,num_layers",
    [
        ({"a": 5, "b": 3}, {"a": 4, "b": 2}, False, 2),
        ({"a": 5, "b": 3, "c": 4}, {"a": 3, "b": 0, "c": 5}, True, 1),
    ],
)
def test_cross_attention_matches_numpy(dims, lengths, pos_emb, num_layers):
    feats, tokens, masks, mm = make_inputs(
        dims, lengths, missing=[("b", 1), ("a", 2)], padded=[("a", 0, 1), ("c", 2, 3)]
    )
    block = F.create("cross_attention", out_dim=OUT, dim=DIM, num_heads=HEADS, mlp_dim=MLP_DIM,
                     num_layers=num_layers, pos_emb=pos_emb)
    variables, got = init_apply(block, feats, mm)
    want = np_cross_attention(params_np(variables), tokens, masks, num_layers, pos_emb)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)


def test_cross_attention_with_pooled_token_matches_numpy():
    dims, lengths = {"a": 5, "b": 3, "c": 5}, {"a": 3, "b": 0, "c": 4}
    feats, tokens, masks, mm = make_inputs(dims, lengths, missing=[("b", 1), ("a", 2)], padded=[("c", 2, 3)])
    tokens, masks = np_with_pooled_token(tokens, masks, mm)
    for readout in ("mean", "pooled_token"):
        block = F.create("cross_attention", out_dim=OUT, dim=DIM, num_heads=HEADS, mlp_dim=MLP_DIM,
                         pos_emb=True, pooled_token=True, readout=readout)
        variables, got = init_apply(block, feats, mm)
        assert params_np(variables)["pos_emb_a"].shape == (4, DIM)  # T_a + 1
        want = np_cross_attention(params_np(variables), tokens, masks, 1, True, first=readout == "pooled_token")
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)


def test_bottleneck_and_perceiver_with_pooled_token_match_numpy():
    dims, lengths = {"a": 5, "b": 3}, {"a": 4, "b": 2}
    feats, tokens, masks, mm = make_inputs(dims, lengths, missing=[("b", 1), ("a", 2)], padded=[("a", 0, 2)])
    tokens, masks = np_with_pooled_token(tokens, masks, mm)
    block = F.create("bottleneck", out_dim=OUT, dim=DIM, num_heads=HEADS, mlp_dim=MLP_DIM, num_layers=2,
                     fusion_layer=1, num_bottlenecks=2, pooled_token=True, readout="pooled_token")
    variables, got = init_apply(block, feats, mm)
    want = np_bottleneck(params_np(variables), tokens, masks, 2, 1, False, first=True)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)
    block = F.create("perceiver", out_dim=OUT, dim=DIM, num_heads=HEADS, mlp_dim=MLP_DIM, num_latents=3,
                     pooled_token=True)
    variables, got = init_apply(block, feats, mm)
    np.testing.assert_allclose(got, np_perceiver(params_np(variables), tokens, masks, 1, 1, False),
                               rtol=2e-4, atol=2e-5)
    block = F.create("perceiver", out_dim=OUT, dim=DIM, num_heads=HEADS, mlp_dim=MLP_DIM, num_latents=3,
                     pooled_token=True, readout="pooled_token")
    variables, got = init_apply(block, feats, mm)
    assert params_np(variables)["out"]["kernel"].shape == (3 * DIM, OUT)  # latent mean + 2 pooled tokens
    np.testing.assert_allclose(got, np_perceiver(params_np(variables), tokens, masks, 1, 1, False, first=True),
                               rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize(
    "fusion_layer,share", [(0, True), (1, False), (2, False)]
)
def test_bottleneck_matches_numpy(fusion_layer, share):
    dims, lengths = {"a": 5, "b": 3, "c": 4}, {"a": 4, "b": 2, "c": 0}
    feats, tokens, masks, mm = make_inputs(dims, lengths, missing=[("b", 1), ("a", 2)], padded=[("a", 0, 2)])
    block = F.create("bottleneck", out_dim=OUT, dim=DIM, num_heads=HEADS, mlp_dim=MLP_DIM, num_layers=2,
                     fusion_layer=fusion_layer, num_bottlenecks=3, share_weights=share)
    variables, got = init_apply(block, feats, mm)
    want = np_bottleneck(params_np(variables), tokens, masks, 2, fusion_layer, share)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("num_layers,num_self_layers,share", [(2, 1, False), (2, 2, True)])
def test_perceiver_matches_numpy(num_layers, num_self_layers, share):
    dims, lengths = {"a": 5, "b": 3}, {"a": 4, "b": 3}
    feats, tokens, masks, mm = make_inputs(dims, lengths, missing=[("b", 1), ("a", 2), ("b", 2)],
                                           padded=[("a", 0, 2)])
    block = F.create("perceiver", out_dim=OUT, dim=DIM, num_heads=HEADS, mlp_dim=MLP_DIM,
                     num_layers=num_layers, num_self_layers=num_self_layers, num_latents=3,
                     share_weights=share)
    variables, got = init_apply(block, feats, mm)
    want = np_perceiver(params_np(variables), tokens, masks, num_layers, num_self_layers, share)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)


# ----------------------------------------------------------- behaviour ---
BLOCKS = {
    "cross_attention": dict(num_layers=1, pos_emb=True),
    "bottleneck": dict(num_layers=2, fusion_layer=1, num_bottlenecks=2),
    "perceiver": dict(num_layers=2, num_latents=3),
}
DIMS3, LENGTHS3 = {"a": 5, "b": 3, "c": 4}, {"a": 4, "b": 0, "c": 3}


def make_block(name, **extra):
    return F.create(name, out_dim=OUT, dim=DIM, num_heads=HEADS, mlp_dim=MLP_DIM, **{**BLOCKS[name], **extra})


@pytest.fixture(scope="module", params=sorted(BLOCKS))
def compiled(request):
    """(name, block, variables, jitted apply) on the 3-modality inputs."""
    name = request.param
    block = make_block(name)
    feats, *_ = make_inputs(DIMS3, LENGTHS3)
    variables = random_variables(block, feats)
    return name, block, variables, jit(block.apply)


def test_all_registered():
    assert {"cross_attention", "bottleneck", "perceiver"} <= set(F.names())


def test_gradients_reach_every_parameter(compiled):
    name, block, _, _ = compiled
    # Every modality with >= 2 tokens: over a single token softmax is 1 and the
    # keys get no gradient by design.
    feats, *_ = make_inputs(DIMS3, {"a": 4, "b": 2, "c": 3}, padded=[("a", 1, 2)])
    variables = random_variables(block, feats)
    w = jnp.asarray(np.random.default_rng(3).normal(size=(3, OUT)), jnp.float32)
    grads = jit(jax.grad(lambda v: (block.apply(v, feats) * w).sum()))(variables)
    for path, g in jax.tree_util.tree_leaves_with_path(nn.unbox(grads)):
        assert np.isfinite(g).all(), (name, path)
        if jax.tree_util.keystr(path).endswith("['key']['bias']"):
            # q·b_k shifts every logit of a softmax row equally: its gradient is 0 by design.
            continue
        assert np.abs(g).max() > 0, f"{name}: no gradient reaches {jax.tree_util.keystr(path)}"


def test_garbage_in_masked_slots_changes_nothing(compiled):
    name, _, variables, apply = compiled
    feats, tokens, masks, mm = make_inputs(DIMS3, LENGTHS3, missing=[("b", 0), ("c", 2)], padded=[("a", 1, 2)])
    base = np.asarray(apply(variables, feats, mm))
    dirty = dict(feats)
    a = np.array(feats["a"].tokens)
    a[1, -2:] = np.nan  # padding
    dirty["a"] = feats["a"].replace(tokens=jnp.asarray(a))
    b = np.array(feats["b"])
    b[0] = np.inf  # missing modality
    dirty["b"] = jnp.asarray(b)
    c = np.array(feats["c"].tokens)
    c[2] = 1e6
    dirty["c"] = feats["c"].replace(tokens=jnp.asarray(c), pooled=feats["c"].pooled.at[2].set(jnp.nan))
    got = np.asarray(apply(variables, dirty, mm))
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, base, rtol=1e-6, atol=1e-6)


def test_masking_one_example_leaves_others_unchanged(compiled):
    name, _, variables, apply = compiled
    feats, *_ = make_inputs(DIMS3, LENGTHS3)
    full = np.asarray(apply(variables, feats, None))
    mm = {"a": jnp.array([True, False, True]), "c": jnp.array([True, True, True])}
    part = np.asarray(apply(variables, feats, mm))
    np.testing.assert_allclose(part[[0, 2]], full[[0, 2]], rtol=1e-6, atol=1e-6)
    assert not np.allclose(part[1], full[1]), f"{name}: dropping modality a had no effect"


def test_fully_missing_example_is_finite(compiled):
    name, _, variables, apply = compiled
    feats, *_ = make_inputs(DIMS3, LENGTHS3)
    nan_feats = {n: (v.replace(tokens=v.tokens.at[0].set(jnp.nan)) if isinstance(v, Encoded) else v.at[0].set(jnp.nan))
                 for n, v in feats.items()}
    mm = {n: jnp.array([False, True, True]) for n in feats}
    got = np.asarray(apply(variables, nan_feats, mm))
    assert np.isfinite(got).all()
    ref = np.asarray(apply(variables, feats, mm))
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name,num_modalities", [("cross_attention", 4), ("bottleneck", 2), ("perceiver", 4)])
def test_modality_counts_pooled_tokens_and_bf16(name, num_modalities):
    """Pooled and token inputs mixed, 2 or 4 modalities, bf16 compute with f32
    params against the numpy reference (bf16 keeps ~3 significant digits)."""
    dims = dict(list({"w": 3, "x": 4, "y": 2, "z": 5}.items())[:num_modalities])
    lengths = {n: (0 if i % 2 else 2 + i) for i, n in enumerate(dims)}  # alternate pooled / tokens
    feats, tokens, masks, _ = make_inputs(dims, lengths, batch=2, missing=[(sorted(dims)[0], 1)])
    mm = {n: jnp.asarray(masks[n].any(-1)) for n in dims}
    block = make_block(name, dtype=jnp.bfloat16)
    variables = random_variables(block, feats, mm)
    out = jit(block.apply)(variables, feats, mm)
    assert out.dtype == jnp.bfloat16 and out.shape == (2, OUT)
    out = np.asarray(out, np.float32)
    assert np.isfinite(out).all()
    p, cfg = params_np(variables), BLOCKS[name]
    if name == "cross_attention":
        want = np_cross_attention(p, tokens, masks, cfg["num_layers"], cfg["pos_emb"])
    elif name == "bottleneck":
        want = np_bottleneck(p, tokens, masks, cfg["num_layers"], cfg["fusion_layer"], False)
    else:
        want = np_perceiver(p, tokens, masks, cfg["num_layers"], 1, False)
    np.testing.assert_allclose(out, want, atol=0.05 * np.abs(want).max() + 0.05)


def test_vmap_matches_batched():
    # One block (the cheapest to compile); the others share its layers and masking.
    block = make_block("perceiver")
    feats, tokens, masks, _ = make_inputs(DIMS3, LENGTHS3)
    variables = random_variables(block, feats)
    # vmap over the batch axis with a batch of one inside.
    per_example = jit(jax.vmap(lambda f: block.apply(variables, jax.tree.map(lambda a: a[None], f))[0]))(feats)
    cfg = BLOCKS["perceiver"]
    want = np_perceiver(params_np(variables), tokens, masks, cfg["num_layers"], 1, False)
    np.testing.assert_allclose(per_example, want, rtol=2e-4, atol=2e-5)


def test_cross_attention_returns_tokens():
    feats, toks, masks, mm = make_inputs({"a": 5, "b": 3, "c": 4}, {"a": 4, "b": 2, "c": 3}, missing=[("a", 1)])
    block = F.create("cross_attention", out_dim=OUT, dim=DIM, num_heads=HEADS, mlp_dim=MLP_DIM, return_tokens=True)
    variables = random_variables(block, feats, mm)
    pooled, tokens = jit(block.apply)(variables, feats, mm)
    want = np_cross_attention(params_np(variables), toks, masks, 1, False)
    np.testing.assert_allclose(pooled, want, rtol=2e-4, atol=2e-5)
    assert {n: t.shape for n, t in tokens.items()} == {"a": (3, 4, 2 * DIM), "b": (3, 2, 2 * DIM), "c": (3, 3, 2 * DIM)}
    assert np.all(np.asarray(tokens["a"][1]) == 0)  # missing target
    assert np.abs(np.asarray(tokens["a"][0])).max() > 0


def test_sharding_axis_names_on_every_weight(compiled):
    name, _, variables, _ = compiled
    leaves = jax.tree.leaves(variables["params"], is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    for leaf in leaves:
        assert isinstance(leaf, nn.LogicallyPartitioned), name
        assert len(leaf.names) == leaf.value.ndim and all(leaf.names)
    names = {leaf.names for leaf in leaves}
    assert ("fusion_in", "fusion_out") in names and ("embed", "heads", "kv") in names


@pytest.mark.parametrize(
    "name,config",
    [
        ("cross_attention", dict(dim=16, num_heads=4, num_layers=2, pos_emb=True)),
        ("bottleneck", dict(dim=8, num_heads=2, num_layers=3, fusion_layer=1, num_bottlenecks=2)),
        ("bottleneck", dict(dim=8, num_heads=2, num_layers=2, share_weights=True, mlp_dim=20)),
        ("perceiver", dict(dim=8, num_heads=2, num_layers=3, num_latents=4, num_self_layers=2)),
        ("perceiver", dict(dim=8, num_heads=1, num_layers=2, num_self_layers=0, share_weights=True)),
        ("cross_attention", dict(dim=8, num_heads=2, pos_emb=True, pooled_token=True, readout="pooled_token")),
        ("bottleneck", dict(dim=8, num_heads=2, pos_emb=True, pooled_token=True)),
        ("perceiver", dict(dim=8, num_heads=2, pooled_token=True)),
        ("perceiver", dict(dim=8, num_heads=2, pooled_token=True, readout="pooled_token")),
    ],
)
def test_cost_model_is_exact(name, config):
    """Params against init; FLOPs against every dot_general in the traced forward pass (B=1)."""
    dims, lengths = {"a": 5, "b": 3, "c": 4}, {"a": 4, "b": 0, "c": 3}
    feats, *_ = make_inputs(dims, lengths, batch=1)
    block = F.create(name, out_dim=OUT, **config)
    variables = jax.eval_shape(block.init, jax.random.key(0), feats)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.unbox(variables)))
    cost = F.cost(name, dims, OUT, token_lengths={n: max(t, 1) for n, t in lengths.items()}, **config)
    assert cost.params == n_params
    jaxpr = jax.make_jaxpr(block.apply)(nn.unbox(variables), feats)
    assert cost.flops == dot_flops(jaxpr.jaxpr)


def dot_flops(jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            lhs, rhs = (v.aval.shape for v in eqn.invars)
            (_, rc), (_, rb) = eqn.params["dimension_numbers"]
            free = [s for i, s in enumerate(rhs) if i not in rc and i not in rb]
            total += 2 * int(np.prod(lhs)) * int(np.prod(free))
        mult = eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1
        for p in eqn.params.values():
            for sub in p if isinstance(p, (tuple, list)) else (p,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    total += mult * dot_flops(inner)
    return total


def test_cost_defaults_to_pooled_lengths_and_rejects_unknown_keys():
    pooled = F.cost("perceiver", [4, 6], 3, dim=8, num_heads=2)
    ones = F.cost("perceiver", [4, 6], 3, dim=8, num_heads=2, token_lengths=[1, 1])
    assert pooled == ones
    with pytest.raises(ValueError, match="num_latent"):
        F.cost("perceiver", [4, 6], 3, num_latent=4)
    with pytest.raises(ValueError, match="token_lengths"):
        F.cost("bottleneck", [4, 6], 3, token_lengths=[1, 2, 3])


@pytest.mark.parametrize(
    "name,config,match",
    [
        ("cross_attention", dict(dim=10, num_heads=4), "num_heads"),
        ("bottleneck", dict(num_layers=2, fusion_layer=3), "fusion_layer"),
        ("perceiver", dict(num_latents=0), "num_latents"),
        ("perceiver", dict(num_layers=0), "num_layers"),
        ("cross_attention", dict(readout="first"), "readout must be one of"),
        ("bottleneck", dict(readout="pooled_token"), "readout='pooled_token' needs pooled_token=True"),
        ("perceiver", dict(readout="pooled_token"), "readout='pooled_token' needs pooled_token=True"),
    ],
)
def test_bad_config_raises_clear_error(name, config, match):
    feats, *_ = make_inputs({"a": 3, "b": 2}, {"a": 2, "b": 0}, batch=1)
    # The block's own checks (F.create range-checks sizes before: test_base.py).
    with pytest.raises(AttentionConfigError, match=match):
        jax.eval_shape(FUSION.get(name)(out_dim=2, **config).init, jax.random.key(0), feats)


def test_pooled_token_needs_matching_widths():
    feats = {"a": Encoded(pooled=jnp.zeros((2, 4)), tokens=jnp.zeros((2, 3, 5)), mask=jnp.ones((2, 3), bool)),
             "b": jnp.zeros((2, 3))}
    with pytest.raises(F.FusionInputError, match="modality 'a'.*pooled \\(2, 4\\) and tokens \\(2, 3, 5\\)"):
        jax.eval_shape(F.create("perceiver", out_dim=2, dim=DIM, num_heads=HEADS, pooled_token=True).init,
                       jax.random.key(0), feats)
