"""Attention and transformer layers against plain-numpy references."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.layers import MultiHeadAttention, TransformerStack


def np_attention(params, xq, xkv, mask):
    """Multi-head softmax attention in numpy. mask (B, T, S) bool."""
    q = np.einsum("btd,dnh->btnh", xq, params["query"]["kernel"]) + params["query"]["bias"]
    k = np.einsum("bsd,dnh->bsnh", xkv, params["key"]["kernel"]) + params["key"]["bias"]
    v = np.einsum("bsd,dnh->bsnh", xkv, params["value"]["kernel"]) + params["value"]["bias"]
    logits = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(q.shape[-1])
    logits = np.where(mask[:, None], logits, -1e30)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w = w / w.sum(-1, keepdims=True)
    o = np.einsum("bnts,bsnh->btnh", w, v)
    return np.einsum("btnh,nhd->btd", o, params["out"]["kernel"]) + params["out"]["bias"]


def test_cross_attention_matches_numpy():
    rng = np.random.default_rng(0)
    xq = rng.normal(size=(2, 3, 8)).astype(np.float32)
    xkv = rng.normal(size=(2, 5, 6)).astype(np.float32)
    mask = np.ones((2, 3, 5), bool)
    mask[1, :, 3:] = False
    attn = MultiHeadAttention(num_heads=2, qkv_dim=8)
    variables = attn.init(jax.random.key(0), xq, xkv, mask=mask)
    got = attn.apply(variables, xq, xkv, mask=mask)
    params = jax.tree.map(np.asarray, nn.unbox(variables["params"]))
    np.testing.assert_allclose(got, np_attention(params, xq, xkv, mask), rtol=1e-4, atol=1e-5)


def test_padding_does_not_change_real_tokens():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1, 6, 16)).astype(np.float32)
    mask = np.array([[True] * 4 + [False] * 2])
    stack = TransformerStack(num_layers=2, num_heads=4, mlp_dim=32)
    v = stack.init(jax.random.key(0), x, mask)
    y1 = stack.apply(v, x, mask)
    x2 = x.copy()
    x2[:, 4:] = 1e3  # garbage in the padding
    y2 = stack.apply(v, x2, mask)
    np.testing.assert_allclose(y1[:, :4], y2[:, :4], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("remat", [False, True])
def test_scan_equals_unrolled(remat):
    """nn.scan over stacked weights computes the same function as the loop."""
    x = jax.random.normal(jax.random.key(0), (2, 4, 16))
    loop = TransformerStack(num_layers=3, num_heads=2, mlp_dim=32)
    scan = TransformerStack(num_layers=3, num_heads=2, mlp_dim=32, scan=True, remat=remat)
    v = nn.unbox(loop.init(jax.random.key(1), x)["params"])
    stacked = {
        "layers": jax.tree.map(lambda *a: jnp.stack(a), *[v[f"layer_{i}"] for i in range(3)]),
        "ln_final": v["ln_final"],
    }
    want = loop.apply({"params": v}, x)
    got = scan.apply({"params": stacked}, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    g = jax.grad(lambda p: scan.apply({"params": p}, x).sum())(stacked)
    assert all(bool(jnp.any(leaf != 0)) for leaf in jax.tree.leaves(g))
