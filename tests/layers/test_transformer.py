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


@pytest.mark.parametrize(
    "backend, dtype, head_dim, q_len, kv_len, has_mask, expected",
    [
        ("gpu", jnp.bfloat16, 64, 16, 16, True, True),
        ("gpu", jnp.float16, 128, 7, 9, False, True),    # no mask: odd lengths are fine
        ("gpu", jnp.float32, 64, 16, 16, False, False),  # cuDNN flash attention is bf16/fp16 only
        ("gpu", jnp.bfloat16, 60, 16, 16, False, False),  # head dim not a multiple of 8
        ("gpu", jnp.bfloat16, 256, 16, 16, False, False),  # head dim over 128
        ("gpu", jnp.bfloat16, 64, 1, 16, True, False),   # a mask (bias) needs even lengths
        ("cpu", jnp.bfloat16, 64, 16, 16, False, False),
    ],
)
def test_cudnn_attention_applies(backend, dtype, head_dim, q_len, kv_len, has_mask, expected):
    from mmjax.layers.transformer import cudnn_attention_applies

    assert cudnn_attention_applies(backend, dtype, head_dim, q_len, kv_len, has_mask) is expected


def test_dot_product_attention_auto_matches_numpy_and_rejects_unknown():
    from mmjax.layers.transformer import dot_product_attention

    rng = np.random.default_rng(1)
    q, k, v = (rng.normal(size=s).astype(np.float32) for s in [(2, 3, 2, 8), (2, 5, 2, 8), (2, 5, 2, 8)])
    mask = np.ones((2, 1, 3, 5), bool)
    mask[0, ..., 4:] = False
    logits = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(8)
    logits = np.where(mask, logits, -1e30)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    expected = np.einsum("bnts,bsnh->btnh", w / w.sum(-1, keepdims=True), v)
    for impl in ("auto", "xla"):
        got = dot_product_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), mask=jnp.asarray(mask),
                                    implementation=impl)
        np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="attention implementation must be one of"):
        dot_product_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), implementation="flash")
