"""Property-based checks over every registered fusion block.

For random modality sets (2-4 modalities; pooled (B, D), token (B, T, D) or
Encoded inputs; random modality and token masks, including examples with
every modality missing), every block must either return finite (B, F)
outputs or raise FusionInputError. Masked-out slots are filled with NaN, so
these runs also check the contract that garbage in a missing modality or a
padded token never reaches the output. Invalid inputs (bad rank, integer
features, mismatched batch, a single modality) must raise FusionInputError.

Shapes are drawn from small sets so that the eager op caches are reused.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmjax import fusion
from mmjax.fusion.base import FusionInputError
from mmjax.types import Encoded

OUT = 4
# The smallest sensible config of each block; a block missing here gets {"out_dim": OUT}.
CONFIGS = {
    "bilinear": {"factor_dim": 2},
    "tensor": {"pre_dim": 2},
    "low_rank": {"rank": 2},
    "cross_attention": {"dim": 4, "num_heads": 2},
    "bottleneck": {"dim": 4, "num_heads": 2, "num_layers": 1, "num_bottlenecks": 2},
    "perceiver": {"dim": 4, "num_heads": 2, "num_latents": 2},
}
SETTINGS = settings(max_examples=4, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))


@st.composite
def fusion_inputs(draw):
    b = 3
    m = draw(st.integers(2, 4))
    seed = draw(st.integers(0, 2 ** 16))
    rng = np.random.RandomState(seed)
    features, mmask = {}, {}
    for i in range(m):
        name = "m%d" % i
        kind = draw(st.sampled_from(["pooled", "tokens", "encoded"]))
        d = 3 if i % 2 else 2
        t = 3
        present = rng.rand(b) < 0.7
        if kind == "pooled":
            x = rng.randn(b, d).astype(np.float32)
            x[~present] = np.nan
            features[name] = jnp.asarray(x)
        else:
            tok = rng.randn(b, t, d).astype(np.float32)
            tmask = rng.rand(b, t) < 0.7
            tok[~tmask] = np.nan
            tok[~present] = np.nan
            if kind == "tokens":
                # No token mask travels with a bare array: only whole missing examples are garbage.
                tok = np.where(np.isnan(tok) & present[:, None, None], 0.0, tok).astype(np.float32)
                features[name] = jnp.asarray(tok)
            else:
                pooled = np.where(present[:, None], rng.randn(b, d), np.nan).astype(np.float32)
                features[name] = Encoded(pooled=jnp.asarray(pooled), tokens=jnp.asarray(tok),
                                         mask=jnp.asarray(tmask))
        mmask[name] = jnp.asarray(present)
    return b, features, mmask


def _run(name, features, mmask):
    block = fusion.create(name, out_dim=OUT, **CONFIGS.get(name, {}))
    variables = block.init(jax.random.PRNGKey(0), features, mmask)
    return np.asarray(block.apply(nn.unbox(variables), features, mmask))


@pytest.mark.slow
@pytest.mark.parametrize("name", fusion.FUSION.names())
def test_finite_or_fusion_input_error(name):
    @SETTINGS
    @given(fusion_inputs())
    def check(case):
        b, features, mmask = case
        try:
            out = _run(name, features, mmask)
        except FusionInputError:
            return
        assert out.ndim == 2 and out.shape[0] == b, out.shape
        assert np.isfinite(out).all(), f"{name}: non-finite output {out}"
    check()


BAD = {
    "rank 4": lambda: {"a": jnp.ones((2, 1, 1, 3)), "b": jnp.ones((2, 3))},
    "integer features": lambda: {"a": jnp.ones((2, 3), jnp.int32), "b": jnp.ones((2, 3))},
    "batch mismatch": lambda: {"a": jnp.ones((2, 3)), "b": jnp.ones((3, 3))},
    "one modality": lambda: {"a": jnp.ones((2, 3))},
}


@pytest.mark.parametrize("name", fusion.FUSION.names())
def test_bad_inputs_raise_fusion_input_error(name):
    for what, make in BAD.items():
        if what == "one modality" and name == "late":
            continue  # late fusion of a single head's logits is legitimate
        with pytest.raises(FusionInputError):
            _run(name, make(), None)
    with pytest.raises(FusionInputError, match="modality_mask"):
        _run(name, {"a": jnp.ones((2, 3)), "b": jnp.ones((2, 3))}, {"a": jnp.ones((3,), bool)})
