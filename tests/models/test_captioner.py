"""Captioner: teacher forcing, cached vs uncached decoding, LSTM decoder, overfitting."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mmjax.layers.decoder import DecoderInputError, TransformerDecoder
from mmjax.models.captioner import (
    Captioner,
    CaptionerConfigError,
    caption_loss,
    generate,
    shift_right,
)

V, L = 9, 6
ENC = {"encoder": "mlp", "features": (8,)}


def rkey(seed):
    """An RBG key: its initialisers compile several times faster than threefry's,
    which dominates the cost of these tiny tests."""
    return jax.random.key(seed, impl="unsafe_rbg")


def make_batch(seed=0, b=2, s=3):
    rng = np.random.default_rng(seed)
    text = np.array([[4, 5, 6, 3, 0, 0], [7, 4, 3, 0, 0, 0]], np.int32)[:b]  # EOS is the tokenizer's 3
    return {
        "inputs": {"image": rng.normal(size=(b, s, 5)).astype(np.float32), "text": text},
        "token_mask": {"image": np.array([[True, True, False], [True, True, True]])[:b]},
    }


def small(decoder="transformer", **kw):
    cfg = dict(encoder=ENC, vocab_size=V, max_len=L, decoder=decoder, width=16, num_layers=2,
               num_heads=2, mlp_dim=32)
    cfg.update(kw)
    return Captioner(**cfg)


def uncached_greedy(model, variables, batch, steps):
    """Greedy by re-running the full decoder over the whole prefix at every step
    (no cache). The prefix is right-padded to a fixed length so one compiled
    function serves every step; causality keeps the padding out of position t."""
    context, cmask, pooled = model.apply(variables, batch["inputs"]["image"], batch["token_mask"]["image"],
                                         method="encode")
    full = jax.jit(lambda seq: model.apply(variables, seq, context, cmask, pooled, method="decode_tokens"))
    b = context.shape[0]
    seq = np.full((b, steps), model.pad_id, np.int32)
    seq[:, 0] = model.bos_id
    out = np.zeros((b, steps), np.int32)
    for t in range(steps):
        logits = np.array(full(jnp.asarray(seq))[:, t])
        logits[:, [model.bos_id, model.pad_id]] = -np.inf  # never emitted
        out[:, t] = np.argmax(logits, -1)
        if t + 1 < steps:
            seq[:, t + 1] = out[:, t]
    for row in out:  # pad after the first EOS, as the decoders do
        hit = np.flatnonzero(row == model.eos_id)
        if hit.size:
            row[hit[0] + 1:] = model.pad_id
    return out


@pytest.fixture(scope="module")
def transformer():
    model = small(num_layers=1)
    batch = make_batch()
    return model, jax.jit(model.init)(rkey(0), batch), batch


@pytest.fixture(scope="module")
def forward(transformer):
    model = transformer[0]
    return jax.jit(lambda v, b: model.apply(v, b))


def test_teacher_forcing_shapes_and_loss(transformer, forward):
    model, variables, batch = transformer
    logits = forward(variables, batch)
    assert logits.shape == (2, L, V) and logits.dtype == jnp.float32
    np.testing.assert_array_equal(shift_right(batch["inputs"]["text"], 2)[1], [2, 7, 4, 3, 0, 0])
    loss, metrics = caption_loss(logits, batch["inputs"]["text"])
    # numpy reference: mean NLL over the 4 + 3 real target tokens.
    lg = np.asarray(logits, np.float64)
    logp = lg - np.log(np.exp(lg).sum(-1, keepdims=True))
    t = batch["inputs"]["text"]
    nll = [-logp[b, i, t[b, i]] for b in range(2) for i in range(L) if t[b, i] != 0]
    np.testing.assert_allclose(loss, np.mean(nll), rtol=1e-5)
    assert float(metrics["num_tokens"]) == 7
    # Label smoothing: (1 - e) NLL + e * mean over the vocabulary of -log p.
    smooth, _ = caption_loss(logits, t, label_smoothing=0.1)
    ref = np.mean([0.9 * -logp[b, i, t[b, i]] - 0.1 * logp[b, i].mean()
                   for b in range(2) for i in range(L) if t[b, i] != 0])
    np.testing.assert_allclose(smooth, ref, rtol=1e-5)


def test_padding_does_not_change_real_positions(transformer, forward):
    model, variables, batch = transformer
    logits = forward(variables, batch)
    short = {**batch, "inputs": {**batch["inputs"], "text": batch["inputs"]["text"][:, :4]}}
    np.testing.assert_allclose(model.apply(variables, short), logits[:, :4], rtol=1e-5, atol=1e-5)
    # Masked context tokens are ignored: garbage there changes nothing.
    noisy = {**batch, "inputs": {**batch["inputs"], "image": batch["inputs"]["image"].copy()}}
    noisy["inputs"]["image"][0, 2] = 1e3
    np.testing.assert_allclose(forward(variables, noisy), logits, rtol=1e-5, atol=1e-5)


def test_cached_decoder_equals_full_rerun():
    dec = TransformerDecoder(vocab_size=V, max_len=L, width=16, num_layers=2, num_heads=2, mlp_dim=32,
                             tie_embeddings=False)
    rng = np.random.default_rng(1)
    tokens = jnp.asarray(rng.integers(1, V, size=(2, L)), jnp.int32)
    ctx = jnp.asarray(rng.normal(size=(2, 3, 7)), jnp.float32)
    cmask = jnp.array([[True, False, True], [True, True, True]])
    params = jax.jit(dec.init)(rkey(0), tokens, ctx, cmask)["params"]
    full = dec.apply({"params": params}, tokens, ctx, cmask)
    ddec = dec.clone(decode=True)
    shapes = jax.eval_shape(lambda: ddec.init(rkey(0), tokens, ctx, cmask)["cache"])
    cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    step = jax.jit(lambda tok, cache: ddec.apply({"params": params, "cache": cache}, tok, ctx, cmask,
                                                 mutable=["cache"]))
    # One token at a time, then a 2-token chunk (prefill) followed by single steps.
    for chunks in ([1] * L, [2, 1, 1, 2]):
        c, pos = cache, 0
        for n in chunks:
            out, mut = step(tokens[:, pos:pos + n], c)
            c = mut["cache"]
            np.testing.assert_allclose(out, full[:, pos:pos + n], rtol=1e-4, atol=1e-5)
            pos += n


def test_cached_greedy_and_beam_match_uncached(transformer, forward):
    model, variables, batch = transformer
    tokens, logp = jax.jit(lambda v, b: generate(model, v, b))(variables, batch)
    np.testing.assert_array_equal(tokens, uncached_greedy(model, variables, batch, L))
    beam_tokens, _ = jax.jit(lambda v, b: generate(model, v, b, beam_size=2, alpha=0.0))(variables, batch)
    assert beam_tokens.shape == (2, L)
    # alpha = 0: beam search's best is at least as likely as greedy's.
    full = forward(variables, {**batch, "inputs": {**batch["inputs"], "text": beam_tokens}})
    lp = jax.nn.log_softmax(full.at[..., jnp.array([model.bos_id, model.pad_id])].set(-1e9), -1)
    real = (beam_tokens != 0)
    beam_logp = (jnp.take_along_axis(lp, beam_tokens[..., None], -1)[..., 0] * real).sum(-1)
    assert np.all(np.asarray(beam_logp) >= np.asarray(logp) - 1e-4)


def test_lstm_decoder_teacher_forced_and_greedy():
    model = small("lstm", lstm_attention=True)
    batch = make_batch()
    variables = jax.jit(model.init)(rkey(2), batch)
    logits = model.apply(variables, batch)
    assert logits.shape == (2, L, V)
    assert "attn_key" in nn.unbox(variables["params"])["text_decoder"]
    tokens, _ = jax.jit(lambda v, b: generate(model, v, b))(variables, batch)
    np.testing.assert_array_equal(tokens, uncached_greedy(model, variables, batch, L))


def test_lstm_without_attention_sees_context_only_through_initial_state():
    model = small("lstm", lstm_attention=False, width=8)
    batch = make_batch()
    variables = jax.jit(model.init)(rkey(2), batch)
    params = nn.unbox(variables["params"])["text_decoder"]
    assert "attn_key" not in params and {"init_c", "init_h"} <= set(params)
    forward = jax.jit(model.apply)
    logits = forward(variables, batch)
    assert logits.shape == (2, L, V) and np.all(np.isfinite(logits))
    # Same pooled encoding -> same logits: move weight between two real context
    # tokens of example 1 so their mean is unchanged.
    moved = {**batch, "inputs": {**batch["inputs"], "image": batch["inputs"]["image"].copy()}}
    img = moved["inputs"]["image"]
    img[1, 0], img[1, 1] = img[1, 1].copy(), img[1, 0].copy()
    np.testing.assert_allclose(forward(variables, moved), logits, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_tiny_captioner_overfits_two_sequences():
    model = small(width=16, num_layers=1, mlp_dim=32)
    batch = make_batch(seed=3)
    params = jax.jit(model.init)(rkey(3), batch)["params"]
    tx = optax.adam(3e-2)
    opt_state = tx.init(params)

    @jax.jit
    def train_step(params, opt_state):
        def loss_fn(p):
            return caption_loss(model.apply({"params": p}, batch), batch["inputs"]["text"])[0]

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for _ in range(60):
        params, opt_state, loss = train_step(params, opt_state)
        losses.append(float(loss))
    assert losses[-1] < 0.05 * losses[0], losses[::10]
    tokens, _ = generate(model, {"params": params}, batch)
    np.testing.assert_array_equal(tokens, batch["inputs"]["text"])


def test_config_and_input_errors(transformer):
    model, variables, batch = transformer
    with pytest.raises(CaptionerConfigError, match="decoder must be one of"):
        small("gru").init(rkey(0), batch)
    with pytest.raises(CaptionerConfigError, match="exceed max_len"):
        long = {**batch, "inputs": {**batch["inputs"], "text": np.ones((2, L + 1), np.int32)}}
        model.apply(variables, long)
    with pytest.raises(CaptionerConfigError, match="has no 'image'"):
        model.apply(variables, {"inputs": {"text": batch["inputs"]["text"]}})
    with pytest.raises(DecoderInputError, match="integer ids"):
        TransformerDecoder(vocab_size=V, max_len=L, width=8, num_heads=2, mlp_dim=8).init(
            rkey(0), jnp.zeros((1, 2)), jnp.zeros((1, 2, 4)))


def test_leading_bos_in_targets_is_dropped_before_teacher_forcing():
    """Pipeline text ids start with BOS; the captioner must see [BOS, y1, ...] as decoder input and
    predict y1 first, exactly as for the same caption without the leading BOS."""
    from mmjax.models.captioner import strip_bos

    t = jnp.array([[2, 9, 8, 3, 0], [9, 8, 7, 3, 0]])
    np.testing.assert_array_equal(strip_bos(t, 2), [[9, 8, 3, 0, 0], [9, 8, 7, 3, 0]])
    model = Captioner(encoder={"encoder": "mlp", "features": (8,)}, source="x", target="text", vocab_size=12,
                      max_len=6, width=8, num_layers=1, num_heads=2, mlp_dim=16, bos_id=2, eos_id=3)
    x = jax.random.normal(jax.random.PRNGKey(0), (1, 4))
    plain = {"inputs": {"x": x, "text": jnp.array([[9, 8, 3, 0, 0, 0]])}}
    with_bos = {"inputs": {"x": x, "text": jnp.array([[2, 9, 8, 3, 0, 0]])}}
    variables = model.init(jax.random.PRNGKey(1), plain)
    np.testing.assert_allclose(model.apply(variables, with_bos), model.apply(variables, plain), rtol=1e-6)


@pytest.mark.parametrize("decoder", ["transformer", "lstm"])
def test_every_weight_maps_onto_the_mesh_rules(decoder):
    """Each weight's logical axes are distinct and resolve under the default rules (a repeated name,
    as the context projection once had, makes every sharded run fail at the state's sharding)."""
    import flax.linen as nn

    from mmjax.sharding import LOGICAL_RULES

    model = small(decoder, num_layers=1)
    abstract = jax.eval_shape(model.init, rkey(0), make_batch())
    specs = jax.tree.leaves(nn.get_partition_spec(abstract)["params"],
                            is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    assert specs and all(len(set(s)) == len(s) for s in specs if s), specs
    for s in specs:
        nn.logical_to_mesh_axes(s, LOGICAL_RULES)
