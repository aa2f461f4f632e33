"""MultiHeadAttention / TransformerBlock with decode=True: the KV cache against the full causal pass."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.layers import MultiHeadAttention, TransformerBlock


def zero_cache(module, x, *args, **kwargs):
    """The decode-mode module's cache for inputs shaped like x (B, L_max, D), all zeros."""
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), x, *args, **kwargs)["cache"])
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def run_chunks(module, params, x, chunks, *args, **kwargs):
    """Feeds x (B, L, D) through the decode-mode module chunk by chunk -> (outputs (B, L, D), cache)."""
    cache, pos, outs = zero_cache(module, x, *args, **kwargs), 0, []
    for n in chunks:
        out, mut = module.apply({"params": params, "cache": cache}, x[:, pos:pos + n], *args, **kwargs,
                                mutable=["cache"])
        cache, pos = mut["cache"], pos + n
        outs.append(out)
    return jnp.concatenate(outs, axis=1), cache


@pytest.mark.parametrize("chunks", [[1] * 5, [2, 1, 2], [5]])
def test_cached_self_attention_equals_full_causal_pass(chunks):
    x = jax.random.normal(jax.random.key(0), (2, 5, 16))
    attn = MultiHeadAttention(num_heads=4)
    params = attn.init(jax.random.key(1), x, causal=True)["params"]
    want = attn.apply({"params": params}, x, causal=True)
    cached = MultiHeadAttention(num_heads=4, decode=True)
    got, cache = run_chunks(cached, params, x, chunks, causal=True)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # The cache holds every position's projected keys: (B, L_max, N, H), written up to cache_index.
    assert cache["cached_key"].shape == cache["cached_value"].shape == (2, 5, 4, 4)
    assert int(cache["cache_index"]) == 5
    k = jnp.einsum("btd,dnh->btnh", x, nn.unbox(params)["key"]["kernel"]) + nn.unbox(params)["key"]["bias"]
    np.testing.assert_allclose(cache["cached_key"], k, rtol=1e-5, atol=1e-6)


def test_decode_keeps_the_parameter_tree_and_adds_only_the_cache():
    x = jax.random.normal(jax.random.key(0), (2, 4, 8))
    ctx = jax.random.normal(jax.random.key(1), (2, 3, 6))
    block = TransformerBlock(num_heads=2, mlp_dim=16, causal=True, cross_attention=True)
    train_vars = block.init(jax.random.key(2), x, None, ctx)
    decode_vars = block.clone(decode=True).init(jax.random.key(2), x, None, ctx)
    assert set(train_vars) == {"params"} and set(decode_vars) == {"params", "cache"}
    shapes = lambda t: jax.tree.map(lambda a: a.shape, nn.unbox(t))  # noqa: E731
    assert shapes(decode_vars["params"]) == shapes(train_vars["params"])
    # Only the self-attention caches; cross-attention keys come from the context at every call.
    assert shapes(decode_vars["cache"]) == {
        "self_attn": {"cached_key": (2, 4, 2, 4), "cached_value": (2, 4, 2, 4), "cache_index": ()}}


def test_cached_block_with_cross_attention_equals_full_pass():
    x = jax.random.normal(jax.random.key(0), (2, 6, 8))
    ctx = jax.random.normal(jax.random.key(1), (2, 3, 6))
    ctx_mask = jnp.array([[True, False, True], [True, True, True]])
    block = TransformerBlock(num_heads=2, mlp_dim=16, causal=True, cross_attention=True)
    params = block.init(jax.random.key(2), x, None, ctx, ctx_mask)["params"]
    want = block.apply({"params": params}, x, None, ctx, ctx_mask)
    got, _ = run_chunks(block.clone(decode=True), params, x, [3, 1, 2], None, ctx, ctx_mask)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_decode_rejects_what_the_cache_cannot_hold():
    x = jnp.ones((1, 3, 8))
    attn = MultiHeadAttention(num_heads=2, decode=True)
    for kwargs in ({}, {"inputs_kv": x, "causal": True}, {"mask": jnp.ones((1, 3, 3), bool), "causal": True}):
        with pytest.raises(ValueError, match="decode=True"):
            attn.init(jax.random.key(0), x, **kwargs)


def test_old_import_paths_still_work():
    from mmjax.layers import attention_ops, decoder, decoder_inputs, lstm_decoder, transformer

    assert decoder.LSTMDecoder is lstm_decoder.LSTMDecoder
    assert decoder.AttentionLSTMCell is lstm_decoder.AttentionLSTMCell
    assert decoder.DecoderInputError is decoder_inputs.DecoderInputError
    for name in ("dot_product_attention", "cudnn_attention_applies", "HeadProjection", "HeadMerge"):
        assert getattr(transformer, name) is getattr(attention_ops, name)
