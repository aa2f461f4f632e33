"""Cost models against the real blocks: exact parameter counts, FLOPs against XLA.

Iterates over whatever is registered, so blocks added later (with a cost
model) are covered by the parameter test; ``CONFIGS`` holds their small
configs. Parameter counts come from ``jax.eval_shape(init)`` (nothing runs).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mmjax.fusion as F
from mmjax.fusion.cost import COSTS

OUT = 6
# Blocks that attend over tokens get token inputs and their lengths.
TOKEN_BLOCKS = {"cross_attention", "bottleneck", "perceiver", "nl_gate", "early_transformer", "late_transformer"}
ATTN = {"num_heads": 2, "num_layers": 1, "dim": 8}
CONFIGS = {
    "concat": [{"out_dim": None}, {"out_dim": OUT}],
    "sum": [{"out_dim": OUT}],
    "weighted": [{"out_dim": OUT}],
    "gated": [{"out_dim": OUT}, {"out_dim": OUT, "gate": "sigmoid", "_only_m": 2}],
    "film": [{"out_dim": OUT}, {"out_dim": OUT, "target": 1}],
    "tensor": [{"out_dim": OUT}, {"out_dim": OUT, "pre_dim": 3, "normalize": False}],
    "low_rank": [{"out_dim": OUT, "rank": 3}, {"out_dim": OUT, "rank": 2, "normalize": False}],
    "bilinear": [{"out_dim": OUT, "factor_dim": 2}, {"out_dim": OUT, "factor_dim": 3, "pair_dim": 2}],
    "late": [{"out_dim": OUT}, {"out_dim": OUT, "hidden_dim": 5, "combine": "learned"}],
    "cross_attention": [dict(ATTN, out_dim=OUT)],
    "bottleneck": [dict(ATTN, out_dim=OUT, num_layers=2, fusion_layer=1, num_bottlenecks=2)],
    "perceiver": [dict(ATTN, out_dim=OUT, num_latents=3),
                  dict(ATTN, out_dim=OUT, num_latents=3, pooled_token=True, readout="pooled_token")],
    "attention_fusion": [{"out_dim": OUT}, {"out_dim": None}],
    "deepset": [{"out_dim": OUT, "hidden_dims": (4,), "apply_attention": True},
                {"out_dim": OUT, "proj_dim": 3, "pooling": "max"}],
    "deepset_transformer": [{"out_dim": OUT, "proj_dim": 4, "num_heads": 2, "num_layers": 2, "hidden_dims": (3,)}],
    "multiplicative": [{"out_dim": OUT}, {"out_dim": OUT, "output": "vector"},
                       {"out_dim": OUT, "output": "scalar", "mi_dim": 3, "normalize": False}],
    "nl_gate": [{"out_dim": OUT, "_only_m": 2}, {"out_dim": OUT, "dim": 3, "kv_tokens": 2, "_only_m": 2}],
    "stack": [{"out_dim": OUT}, {"out_dim": None}],
    "early_transformer": [dict(ATTN, out_dim=OUT, pos_emb=True)],
    "late_transformer": [dict(ATTN, out_dim=OUT, num_layers=2)],
}
DIM_SETS = [(3, 5), (4, 2, 6), (2, 3, 4, 5)]
LENGTHS = [3, 2, 4, 1]
MINE = ["concat", "sum", "weighted", "gated", "film", "tensor", "low_rank", "bilinear", "late"]


def cases():
    out = []
    for name in F.names():
        if name not in COSTS:
            continue
        for i, cfg in enumerate(CONFIGS.get(name, [{"out_dim": OUT}])):
            for dims in DIM_SETS:
                if cfg.get("_only_m", len(dims)) == len(dims):
                    out.append(pytest.param(name, cfg, dims, id=f"{name}-{i}-M{len(dims)}"))
    return out


def block_config(name, cfg):
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    if name == "film" and isinstance(cfg.get("target"), int):
        cfg["target"] = f"m{cfg['target']}"
    return cfg


def cost_config(name, cfg, dims):
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_") and k != "out_dim"}
    if name in TOKEN_BLOCKS:
        cfg["token_lengths"] = LENGTHS[: len(dims)]
    return cfg


def features(name, dims, batch=2):
    if name in TOKEN_BLOCKS:
        return {f"m{i}": jnp.zeros((batch, t, d)) for i, (d, t) in enumerate(zip(dims, LENGTHS))}
    return {f"m{i}": jnp.zeros((batch, d)) for i, d in enumerate(dims)}


def param_count(block, feats):
    shapes = jax.eval_shape(block.init, jax.random.key(0), feats)
    return sum(int(np.prod(s.shape)) for s in jax.tree.leaves(nn.unbox(shapes).get("params", {})))


@pytest.mark.parametrize("name,cfg,dims", cases())
def test_cost_model_params_equal_real_count(name, cfg, dims):
    block = F.create(name, **block_config(name, cfg))
    want = param_count(block, features(name, dims))
    got = F.cost(name, list(dims), cfg["out_dim"], **cost_config(name, cfg, dims))
    assert got.params == want, (name, cfg, dims, got, want)


def test_cost_accepts_a_mapping_of_dims():
    assert F.cost("low_rank", {"b": 4, "a": 2}, 3, rank=2) == F.cost("low_rank", [2, 4], 3, rank=2)


def test_known_values():
    # Hand-computed: TFN over (2, 3) -> 4: (3 * 4) * 4 + 4 params (+ 2 * 4 for the default output LayerNorm).
    assert F.cost("tensor", [2, 3], 4, normalize=False).params == 3 * 4 * 4 + 4
    assert F.cost("tensor", [2, 3], 4).params == 3 * 4 * 4 + 4 + 2 * 4
    # LMF rank 2 over (2, 3) -> 4: 2 * (3 + 4) * 4 + 2 + 4 (+ 2 * 4).
    assert F.cost("low_rank", [2, 3], 4, rank=2, normalize=False).params == 2 * 7 * 4 + 2 + 4
    assert F.cost("low_rank", [2, 3], 4, rank=2).params == 2 * 7 * 4 + 2 + 4 + 2 * 4
    assert F.cost("low_rank", [2, 3], 4, rank=2).flops == 2 * 2 * 3 * 4 + 2 * 2 * 4 * 4 + 2 * 2 * 4
    # MFB k=5, o=4 over (2, 3): (3 + 4) * 5 * 4 params, 2 * 5 * 5 * 4 FLOPs.
    assert F.cost("bilinear", [2, 3], 4, factor_dim=5) == F.Cost(params=7 * 20, flops=2 * 5 * 20)
    # TFN's parameters grow as the product of dims, LMF's as the sum.
    assert F.cost("tensor", [8] * 4, 8).params > 40 * F.cost("low_rank", [8] * 4, 8, rank=4).params


# FLOPs: sizes where the matmuls dominate the (uncounted) elementwise work.
FLOP_BATCH = 16
FLOP_CASES = [
    ("concat", {"out_dim": 32}, (24, 32, 16)),
    ("sum", {"out_dim": 32}, (24, 32, 16)),
    ("weighted", {"out_dim": 32}, (24, 32, 16)),
    ("gated", {"out_dim": 32}, (24, 32, 16)),
    ("gated", {"out_dim": 32, "gate": "sigmoid"}, (24, 32)),
    ("film", {"out_dim": 32}, (24, 32, 16)),
    ("tensor", {"out_dim": 16}, (6, 7, 5)),
    ("tensor", {"out_dim": 16, "pre_dim": 4}, (24, 32, 16, 8)),
    ("tensor", {"out_dim": 2}, (40, 3, 4)),  # a mode-by-mode plan
    ("low_rank", {"out_dim": 32, "rank": 4}, (24, 32, 16)),
    ("bilinear", {"out_dim": 32, "factor_dim": 5}, (24, 32)),
    ("bilinear", {"out_dim": 32, "factor_dim": 5, "pair_dim": 16}, (24, 32, 16)),
    ("late", {"out_dim": 32, "hidden_dim": 24}, (24, 32, 16)),
    ("late", {"out_dim": 32, "combine": "learned"}, (24, 32, 16)),
    ("attention_fusion", {"out_dim": 32}, (24, 32, 16)),
    ("deepset", {"out_dim": 32, "hidden_dims": (32,), "apply_attention": True}, (24, 32, 16)),
    ("multiplicative", {"out_dim": 16}, (24, 32, 16)),
    ("multiplicative", {"out_dim": 32, "output": "vector", "normalize": False}, (24, 32)),  # contractions only (the LayerNorm adds ~20% here)
    ("stack", {"out_dim": 32}, (24, 32, 16)),
]


def xla_flops(block, feats, mask):
    params = jax.tree.map(
        lambda s: jnp.zeros(s.shape, s.dtype),
        nn.unbox(jax.eval_shape(block.init, jax.random.key(0), feats, mask))["params"],
    )
    compiled = jax.jit(lambda p, x, m: block.apply({"params": p}, x, m)).lower(params, feats, mask).compile()
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0]
    return analysis["flops"]


@pytest.mark.parametrize("name,cfg,dims", FLOP_CASES, ids=lambda v: str(v) if isinstance(v, str) else "")
def test_flops_close_to_xla(name, cfg, dims):
    rng = np.random.default_rng(0)
    feats = {f"m{i}": jnp.asarray(rng.normal(size=(FLOP_BATCH, d)), jnp.float32) for i, d in enumerate(dims)}
    mask = {k: jnp.ones((FLOP_BATCH,), bool) for k in feats}
    measured = xla_flops(F.create(name, **cfg), feats, mask) / FLOP_BATCH
    model = F.cost(name, list(dims), cfg["out_dim"], **{k: v for k, v in cfg.items() if k != "out_dim"}).flops
    # The model counts matmuls only; XLA also counts elementwise ops, so it may
    # be a little above, never far below.
    assert 0.95 * model <= measured <= 1.15 * model, (name, cfg, model, measured)


def test_stack_cost_takes_the_common_token_length():
    """stack's Dense sees T * sum(D_m) inputs; token_lengths (as the bench passes them) give T."""
    from mmjax.errors import ConfigError

    want = F.Cost(params=(6 * (3 + 5) + 1) * 4, flops=2 * 6 * (3 + 5) * 4)
    assert F.cost("stack", [3, 5], 4, token_lengths=[6, 6]) == want == F.cost("stack", [3, 5], 4, token_length=6)
    with pytest.raises(ConfigError, match="equal lengths"):
        F.cost("stack", [3, 5], 4, token_lengths=[6, 5])
