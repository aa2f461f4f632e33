"""The PyTorch references agree with the mmjax fusion blocks given the same weights.

Two independent implementations of each published method (flax einsums /
contraction plans vs stock PyTorch layers, e.g. TFN's materialised outer
product vs mmjax's mode-by-mode contraction) cross-check each other and the
``load_from_flax`` weight mapping.
"""
import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is the benchmark-only extra (pip install torch==2.13.0)")

import mmjax.fusion as fusion  # noqa: E402
from benchmarks import reference_torch as ref  # noqa: E402
from benchmarks.fusion_throughput import random_params  # noqa: E402

ATT = dict(dim=8, num_heads=2)
# (block, config, token inputs?, number of modalities): configs chosen to hit
# each reference's branches (pre-projections, extra pairs' projection,
# sigmoid gate, shared weights, several layers...).
CASES = [
    ("concat", {}, False, 3),
    ("sum", {}, False, 3),
    ("sum", {"mean": False}, False, 3),  # the plain sum; the default divides by M
    ("weighted", {}, False, 3),
    # normalize=False: the published GMU; the default unit-scales each input first.
    ("gated", {"normalize": False}, False, 3),
    ("gated", {"gate": "sigmoid", "normalize": False}, False, 2),
    ("gated", {}, False, 2),
    # normalize=False: the published FiLM; the default unit-scales the output.
    ("film", {"normalize": False}, False, 3),
    ("film", {}, False, 3),
    ("film", {"target": "m1"}, False, 2),
    # normalize=False: MultiBench's TFN / LMF formulas; the default adds a LayerNorm on the output.
    ("tensor", {"normalize": False}, False, 3),
    ("tensor", {"pre_dim": 3}, False, 2),
    ("low_rank", {"rank": 3, "normalize": False}, False, 3),
    ("low_rank", {"rank": 3}, False, 2),
    ("bilinear", {"factor_dim": 3}, False, 2),
    ("bilinear", {"factor_dim": 2, "pair_dim": 3}, False, 3),
    ("late", {}, False, 2),
    ("late", {"hidden_dim": 5, "combine": "learned"}, False, 3),
    ("cross_attention", {**ATT, "num_layers": 2}, True, 3),
    ("bottleneck", {**ATT, "num_layers": 2, "fusion_layer": 1, "num_bottlenecks": 2}, True, 2),
    ("bottleneck", {**ATT, "num_layers": 1, "share_weights": True}, True, 3),
    ("perceiver", {**ATT, "num_layers": 2, "num_latents": 3}, True, 2),
    ("perceiver", {**ATT, "num_layers": 2, "share_weights": True, "num_self_layers": 2}, True, 3),
    # The bilinear family (benchmarks/reference_torch_bilinear.py).
    ("mlb", {"mm_dim": 8}, False, 2),
    ("mlb", {"mm_dim": 8, "activ_input": "relu", "normalize": True}, False, 3),
    ("mfh", {"mm_dim": 4, "factor": 3}, False, 2),
    ("mfh", {"mm_dim": 4, "order": 3, "normalize": True, "activ_output": None}, False, 3),
    ("mutan", {"mm_dim": 6, "rank": 3}, False, 2),
    ("mutan", {"mm_dim": 6, "rank": 2, "normalize": True}, False, 3),
    ("block", {"mm_dim": 10, "chunks": 4, "rank": 3}, False, 2),
    ("block", {"mm_dim": 8, "chunks": 3, "rank": 2, "pos_norm": "after_cat"}, False, 3),
    ("mcb", {"mm_dim": 16}, False, 2),
    ("mcb", {"mm_dim": 12, "seed": 5, "activ_output": None}, False, 3),
    ("linear_sum", {"mm_dim": 8}, False, 2),
    ("linear_sum", {"mm_dim": 8, "activ_input": "tanh", "normalize": True}, False, 3),
    ("concat_mlp", {"dimensions": (7, 6)}, False, 3),
    # TorchMultimodal and MultiBench (benchmarks/reference_torch_catalogue.py).
    ("attention_fusion", {}, False, 3),
    ("deepset", {"hidden_dims": (5,), "apply_attention": True}, False, 3),
    ("deepset", {"pooling": "max", "proj_dim": 3, "modality_normalize": True}, False, 2),
    ("deepset", {"pooling": "mean", "norm_factor": 1.5}, False, 3),
    ("deepset_transformer", {"proj_dim": 4, "num_heads": 2, "num_layers": 2, "hidden_dims": (5,)}, False, 3),
    ("multiplicative", {}, False, 3),
    ("multiplicative", {"output": "vector", "normalize": False}, False, 2),
    ("multiplicative", {"output": "scalar", "order": ("m1", "m0")}, False, 2),
    ("nl_gate", {}, True, 2),
    ("nl_gate", {"query": "m1", "dim": 3, "kv_tokens": 2}, True, 2),
    ("stack", {}, False, 3),
    ("early_transformer", {**ATT, "num_layers": 2}, True, 3),
    ("early_transformer", {**ATT, "pooled_token": True, "readout": "pooled_token"}, True, 2),
    ("late_transformer", ATT, True, 3),
    ("late_transformer", {**ATT, "num_layers": 2, "pooled_token": True, "readout": "pooled_token"}, True, 2),
]
DIMS = (5, 4, 6)
OUT = 6


def _inputs(m, tokens, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(m):
        # Different token lengths per modality; the last one pooled (a single token).
        shape = (3, 2 + i, DIMS[i]) if tokens and i < 2 else (3, DIMS[i])
        out[f"m{i}"] = rng.standard_normal(shape).astype(np.float32)
    return out


def _case_id(case):
    name, cfg, _, m = case
    extra = ",".join(f"{k}={v}" for k, v in cfg.items() if k not in ATT)
    return f"{name}[M={m}{',' + extra if extra else ''}]"


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_reference_agrees_with_mmjax(case):
    name, cfg, tokens, m = case
    if name not in fusion.names():
        pytest.skip(f"fusion block {name!r} is not registered in this checkout")
    x = _inputs(m, tokens)
    block = fusion.create(name, out_dim=OUT, **cfg)
    params = random_params(block, x, seed=1)
    # One compile is cheaper than op-by-op dispatch for the attention blocks.
    want = np.asarray(jax.jit(block.apply)(params, x))
    module = ref.load_from_flax(ref.build_reference(name, {k: v.shape[-1] for k, v in x.items()}, OUT, **cfg),
                                params)
    with torch.no_grad():
        got = module(*ref.to_torch_inputs(x)).numpy()
    assert got.shape == want.shape == (3, OUT)
    assert np.abs(want).max() > 1e-3  # a degenerate all-zero output would agree trivially
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)


def test_every_registered_block_has_a_reference():
    missing = [n for n in fusion.names() if not ref.has_reference(n)]
    if missing:
        pytest.skip(f"no PyTorch reference written yet for {missing} (new blocks registered after the references)")
    covered = {c[0] for c in CASES}
    assert set(fusion.names()) <= covered, sorted(set(fusion.names()) - covered)


def test_weights_really_are_loaded():
    """Perturbing one mmjax weight changes the reference's output: nothing is left at its torch init."""
    x = _inputs(2, False)
    block = fusion.create("concat", out_dim=OUT)
    params = random_params(block, x, seed=2)
    module = ref.load_from_flax(ref.build_reference("concat", {k: v.shape[-1] for k, v in x.items()}, OUT), params)
    params["params"]["proj"]["bias"] = params["params"]["proj"]["bias"] + 1.0
    module2 = ref.load_from_flax(ref.build_reference("concat", {k: v.shape[-1] for k, v in x.items()}, OUT), params)
    xs = ref.to_torch_inputs(x)
    with torch.no_grad():
        np.testing.assert_allclose((module2(*xs) - module(*xs)).numpy(), 1.0, rtol=1e-6)


def test_mismatched_params_raise_clear_error():
    x = _inputs(2, False)
    block = fusion.create("concat", out_dim=OUT)
    params = random_params(block, x)
    wrong = ref.build_reference("concat", {"m0": 5, "m1": 7}, OUT)
    with pytest.raises(ref.ReferenceError, match="kernel shape"):
        ref.load_from_flax(wrong, params)
    with pytest.raises(ref.ReferenceError, match="no PyTorch reference"):
        ref.build_reference("nope", {"m0": 2, "m1": 2}, OUT)
    with pytest.raises(ref.ReferenceError, match="unsupported config"):
        ref.build_reference("low_rank", {"m0": 2, "m1": 2}, OUT, rnak=2)
