"""Attention fusion blocks record their weights without changing their output."""
import flax.linen as nn
import jax
import numpy as np
import pytest

from mmjax.explain import attention_maps
from mmjax.fusion import FUSION
from mmjax.fusion.recorded_attention import RecordedAttention
from mmjax.layers import MultiHeadAttention
from mmjax.models.classifier import Classifier
from mmjax.types import Encoded

BLOCKS = {
    "cross_attention": {"out_dim": 8, "dim": 8, "num_heads": 2},
    "bottleneck": {"out_dim": 8, "dim": 8, "num_heads": 2, "num_layers": 2, "fusion_layer": 1, "num_bottlenecks": 2},
    "perceiver": {"out_dim": 8, "dim": 8, "num_heads": 2, "num_latents": 3, "num_layers": 2, "share_weights": True},
}


def _features():
    """a: 5 tokens (example 0 has 3 real ones, 2 has 1); b: one pooled vector. a missing in
    example 2, b missing in example 1."""
    rng = np.random.RandomState(0)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], bool)
    a = Encoded(pooled=rng.randn(3, 4).astype(np.float32), tokens=rng.randn(3, 5, 4).astype(np.float32), mask=mask)
    features = {"a": a, "b": rng.randn(3, 6).astype(np.float32)}
    return features, {"a": np.array([True, True, False]), "b": np.array([True, False, True])}


def _maps(fusion):
    block = FUSION.get(fusion)(**BLOCKS[fusion])
    features, present = _features()
    variables = block.init(jax.random.PRNGKey(0), features, present)
    plain = np.asarray(block.apply(variables, features, present))
    recorded, _ = block.apply(variables, features, present, mutable=["intermediates"])
    np.testing.assert_array_equal(np.asarray(recorded), plain)
    return attention_maps(block, variables, features, modality_mask=present)


@pytest.mark.parametrize("fusion", sorted(BLOCKS))
def test_weights_are_recorded_and_the_output_is_unchanged(fusion):
    maps = _maps(fusion)
    assert maps
    for path, w in maps.items():
        assert w.ndim == 4 and w.shape[:2] == (3, 2), (path, w.shape)
        assert np.all(w >= 0)
        sums = w.sum(-1)
        assert np.all((np.abs(sums - 1) < 1e-5) | (sums == 0)), path  # rows sum to 1, or 0 where discarded


def test_masked_keys_get_no_weight_and_missing_sources_record_zeros():
    maps = _maps("cross_attention")
    assert sorted(maps) == ["a_from_b_0/cross_attn", "b_from_a_0/cross_attn"]
    w = maps["b_from_a_0/cross_attn"]  # b's token attends to a's tokens
    assert w.shape == (3, 2, 1, 5)
    np.testing.assert_allclose(w[0].sum(-1), 1, rtol=1e-5)
    assert np.all(w[0, :, :, 3:] == 0) and np.all(w[0, :, :, :3] > 0)  # padded keys of example 0
    assert np.all(w[2] == 0)  # a is missing in example 2: that attention output is discarded
    back = maps["a_from_b_0/cross_attn"]
    assert back.shape == (3, 2, 5, 1) and np.all(back[1] == 0)  # b missing in example 1
    np.testing.assert_allclose(back[0], 1, rtol=1e-6)  # a single key takes all the weight


def test_shared_weights_give_one_entry_per_call_and_bottleneck_tokens_are_keys():
    maps = _maps("perceiver")
    assert sorted(k for k in maps if k.startswith("cross_0")) == ["cross_0/cross_attn#0", "cross_0/cross_attn#1"]
    assert maps["cross_0/cross_attn#0"].shape == (3, 2, 3, 5 + 1)  # latents over a's 5 tokens + b's 1
    np.testing.assert_allclose(maps["cross_0/cross_attn#0"][0, :, :, 3:5], 0)  # a's padding
    maps = _maps("bottleneck")
    assert maps["a_layer_1/self_attn"].shape == (3, 2, 5 + 2, 5 + 2)  # own tokens + 2 bottlenecks
    assert maps["a_layer_0/self_attn"].shape == (3, 2, 5, 5)


def test_classifier_paths_and_no_maps_without_attention_fusion():
    enc = {"a": {"name": "transformer", "vocab_size": 10, "hidden_dim": 8, "num_layers": 1, "num_heads": 2,
                 "mlp_dim": 16, "max_len": 5}, "b": {"name": "mlp", "features": (8,)}}
    batch = {"inputs": {"a": np.array([[3, 4, 0, 0, 0], [5, 6, 7, 8, 9]], np.int32), "b": np.ones((2, 6), np.float32)},
             "modality_mask": {"a": np.ones(2, bool), "b": np.ones(2, bool)}}
    model = Classifier(num_classes=3, encoders=enc, fusion="cross_attention", fusion_config=BLOCKS["cross_attention"])
    variables = model.init(jax.random.PRNGKey(0), batch)
    maps = attention_maps(model, variables, batch)
    assert sorted(maps) == ["fusion/a_from_b_0/cross_attn", "fusion/b_from_a_0/cross_attn"]  # not the encoder's
    assert np.all(maps["fusion/b_from_a_0/cross_attn"][0, :, :, 2:] == 0)  # text padding is never a key
    concat = Classifier(num_classes=3, encoders=enc, fusion="concat", fusion_config={"out_dim": 8})
    assert attention_maps(concat, concat.init(jax.random.PRNGKey(0), batch), batch) == {}


def test_recorded_attention_matches_the_layer_it_replaces():
    rng = np.random.RandomState(1)
    q, kv = rng.randn(2, 3, 8).astype(np.float32), rng.randn(2, 4, 6).astype(np.float32)
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1]], bool)[:, None, :].repeat(3, 1)
    params = MultiHeadAttention(num_heads=2).init(jax.random.PRNGKey(0), q, kv, mask)
    want = MultiHeadAttention(num_heads=2).apply(params, q, kv, mask)
    got, state = RecordedAttention(num_heads=2).apply(params, q, kv, mask, mutable=["intermediates"])
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    (w,) = state["intermediates"]["attention_weights"]
    params = nn.unbox(params)
    qh = np.einsum("btd,dnh->btnh", q, params["params"]["query"]["kernel"]) + params["params"]["query"]["bias"]
    kh = np.einsum("bsd,dnh->bsnh", kv, params["params"]["key"]["kernel"]) + params["params"]["key"]["bias"]
    logits = np.einsum("btnh,bsnh->bnts", qh, kh) / np.sqrt(4) + np.where(mask[:, None], 0, -1e30)
    ref = np.exp(logits - logits.max(-1, keepdims=True))
    np.testing.assert_allclose(np.asarray(w), ref / ref.sum(-1, keepdims=True), rtol=1e-5, atol=1e-7)
