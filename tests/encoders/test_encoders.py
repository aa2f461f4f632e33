"""Every registered encoder: shapes, logical axes, padding, jit/grad/overfit, bf16, errors."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mmjax import encoders
from mmjax.encoders.common import EncoderInputError
from mmjax.types import Encoded

# XLA's RngBitGenerator compiles in a fraction of the time threefry needs on CPU,
# and every test here compiles an init.
KEY = jax.random.key(0, impl="unsafe_rbg")
# Tiny models run in microseconds; XLA's backend optimisations would double compile time.
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})
TINY_T = dict(hidden_dim=16, num_layers=1, num_heads=2, mlp_dim=32)
AUDIO_FE = dict(sample_rate=8000, n_fft=64, hop_length=32, n_mels=8)

# name -> (registry name, config, input maker (rng, batch) -> (x, mask or None), sequence encoder?)
CASES = {
    "cnn": ("cnn", dict(features=(4, 8)), "image"),
    # Two basic-block stages: the full depths are traced in test_output_shapes; compiling
    # their gradients would cost most of this file's CPU budget.
    "resnet": ("resnet", dict(depth=18, stage_sizes=(1, 1), width=4, small_inputs=True), "image"),
    "vit": ("vit", dict(patch_size=4, pool="cls", **TINY_T), "image"),
    "lstm": ("lstm", dict(vocab_size=20, embed_dim=8, hidden_dim=8, bidirectional=True), "text"),
    "gru": ("gru", dict(vocab_size=20, embed_dim=8, hidden_dim=8, pool="mean"), "text"),
    "transformer": ("transformer", dict(vocab_size=20, max_len=16, **TINY_T), "text"),
    "audio_cnn": ("audio_cnn", dict(features=(4, 8), **AUDIO_FE), "audio"),
    "ast": ("ast", dict(patch_time=4, patch_freq=4, max_time_patches=8, **AUDIO_FE, **TINY_T), "audio"),
    "video_vit_joint": ("video_vit", dict(tubelet_size=(2, 4, 4), max_time_tokens=4, **TINY_T), "video"),
    "video_vit_fact": ("video_vit", dict(tubelet_size=(2, 4, 4), max_time_tokens=4, attention="factorised",
                                         pool="mean", temporal_layers=1, **TINY_T), "video"),
    "video_cnn": ("video_cnn", dict(features=(4, 8)), "video"),
}
SEQUENCE = [k for k, (_, _, kind) in CASES.items() if kind != "image"]


def make_inputs(kind, rng, batch=4, length=None):
    """Inputs with right padding: example i keeps a decreasing number of steps."""
    if kind == "image":
        return rng.normal(size=(batch, 8, 8, 3)).astype(np.float32), None
    if kind == "text":
        length = length or 7
        ids = rng.integers(1, 20, size=(batch, length)).astype(np.int32)
        lengths = np.maximum(length - 2 * np.arange(batch), 1)
        ids[np.arange(length)[None] >= lengths[:, None]] = 0
        return ids, None
    if kind == "audio":
        length = length or 512
        t = np.arange(length) / 8000.0
        freqs = 300.0 + 400.0 * np.arange(batch)[:, None]
        wave = (0.5 * np.sin(2 * np.pi * freqs * t) + 0.05 * rng.normal(size=(batch, length))).astype(np.float32)
        lengths = length - 96 * np.arange(batch)
        return wave, np.arange(length)[None] < lengths[:, None]
    length = length or 4
    video = rng.normal(size=(batch, length, 8, 8, 3)).astype(np.float32)
    lengths = np.maximum(length - 2 * np.arange(batch), 1)
    return video, np.arange(length)[None] < lengths[:, None]


def build(key, **overrides):
    name, config, kind = CASES[key]
    return encoders.create(name, **{**config, **overrides}), kind


@functools.lru_cache(maxsize=None)
def initialised(key):
    model, kind = build(key)
    x, mask = make_inputs(kind, np.random.default_rng(0))
    variables = jit(model.init)(KEY, x, mask)
    return model, kind, variables, jit(model.apply)


def test_registry_has_all_encoders():
    required = {"cnn", "resnet", "vit", "lstm", "gru", "transformer", "audio_cnn", "ast", "video_vit", "video_cnn", "mlp"}
    assert required <= set(encoders.names())


# ------------------------------------------------------------------ shapes (traced only, no compile)
def _shapes(model, x, mask=None):
    def run(x, mask):
        variables = model.init(KEY, x, mask)
        return model.apply(variables, x, mask), variables

    out, variables = jax.eval_shape(run, x, mask)
    return out, variables


@pytest.mark.parametrize(
    "name,config,shape,expect",
    [
        ("cnn", dict(features=(4, 8, 16)), (2, 8, 8, 3), ((2, 16), (2, 1, 16))),
        ("cnn", dict(features=(4, 8), out_dim=5), (2, 28, 28, 1), ((2, 5), (2, 49, 5))),
        ("cnn", dict(features=(4, 8)), (3, 64, 32, 3), ((3, 8), (3, 128, 8))),
        ("resnet", dict(depth=18, width=4, small_inputs=True), (2, 32, 32, 3), ((2, 32), (2, 16, 32))),
        ("resnet", dict(depth=34, width=4), (2, 64, 64, 3), ((2, 32), (2, 4, 32))),
        ("resnet", dict(depth=50, width=4), (2, 64, 64, 3), ((2, 128), (2, 4, 128))),
        ("vit", dict(patch_size=4, **TINY_T), (2, 8, 8, 3), ((2, 16), (2, 4, 16))),
        ("vit", dict(patch_size=8, pool="mean", scan=True, remat=True, **{**TINY_T, "num_layers": 2}),
         (2, 32, 16, 1), ((2, 16), (2, 8, 16))),
        ("lstm", dict(vocab_size=20, embed_dim=8, hidden_dim=6, bidirectional=True, num_layers=2),
         (3, 9), ((3, 12), (3, 9, 12))),
        ("gru", dict(vocab_size=20, embed_dim=8, hidden_dim=6), (2, 1), ((2, 6), (2, 1, 6))),
        ("transformer", dict(vocab_size=20, max_len=64, pool="cls", **TINY_T), (2, 33), ((2, 16), (2, 33, 16))),
        ("transformer", dict(vocab_size=20, max_len=64, pool="last", causal=True, scan=True, **TINY_T),
         (5, 3), ((5, 16), (5, 3, 16))),
        ("audio_cnn", dict(features=(4, 8, 16), out_dim=10, **AUDIO_FE), (2, 1000), ((2, 10), (2, 4, 10))),
        ("audio_cnn", dict(features=(4,), **AUDIO_FE), (2, 20, 8), ((2, 4), (2, 10, 4))),
        ("ast", dict(patch_time=4, patch_freq=4, **AUDIO_FE, **TINY_T), (2, 1000), ((2, 16), (2, 16, 16))),
        ("ast", dict(patch_time=2, patch_freq=8, pool="mean", **AUDIO_FE, **TINY_T), (2, 9, 8), ((2, 16), (2, 5, 16))),
        ("video_vit", dict(tubelet_size=(2, 4, 4), **TINY_T), (2, 5, 8, 12, 3), ((2, 16), (2, 18, 16))),
        ("video_vit", dict(tubelet_size=(1, 8, 8), attention="factorised", temporal_layers=1, **TINY_T),
         (2, 3, 16, 16, 1), ((2, 16), (2, 3, 16))),
        ("video_cnn", dict(features=(4, 8)), (2, 8, 16, 16, 3), ((2, 8), (2, 2, 8))),
        ("video_cnn", dict(features=(4, 8), pool_time=False, out_dim=3), (2, 3, 8, 8, 3), ((2, 3), (2, 3, 3))),
    ],
)
def test_output_shapes(name, config, shape, expect):
    model = encoders.create(name, **config)
    dtype = jnp.int32 if name in ("lstm", "gru", "transformer") else jnp.float32
    out, variables = _shapes(model, jax.ShapeDtypeStruct(shape, dtype))
    assert isinstance(out, Encoded)
    assert out.pooled.shape == expect[0]
    assert out.tokens.shape == expect[1]
    assert out.mask.shape == expect[1][:2] and out.mask.dtype == jnp.bool_
    # Every weight carries logical axis names, one per dimension.
    leaves = jax.tree.leaves(variables["params"], is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    for leaf in leaves:
        assert isinstance(leaf, nn.LogicallyPartitioned), f"{name}: unannotated weight {leaf}"
        assert len(leaf.names) == leaf.value.ndim


# ------------------------------------------------------------------ padding
@pytest.mark.parametrize("key", SEQUENCE)
def test_padding_does_not_change_outputs(key):
    model, kind, variables, apply = initialised(key)
    rng = np.random.default_rng(1)
    x, mask = make_inputs(kind, rng)
    if mask is None:
        mask = x != 0
    out = apply(variables, x, mask)
    extra = {"text": 3, "audio": 200, "video": 3}[kind]
    garbage = make_inputs(kind, rng, length=extra)[0]
    if kind == "text":
        garbage = np.full_like(garbage, 7)  # real-looking ids, masked out explicitly
    x2 = np.concatenate([x, 10 * garbage if kind != "text" else garbage], axis=1)
    mask2 = np.concatenate([mask, np.zeros((x.shape[0], extra), bool)], axis=1)
    out2 = apply(variables, x2, mask2)
    np.testing.assert_allclose(out2.pooled, out.pooled, rtol=1e-5, atol=1e-5)
    t = out.tokens.shape[1]
    np.testing.assert_array_equal(out2.mask[:, :t], out.mask)
    assert not np.asarray(out2.mask[:, t:]).any()
    np.testing.assert_allclose(out2.tokens[:, :t], out.tokens, rtol=1e-5, atol=1e-5)
    # Padded tokens are zeros, so a consumer that ignores the mask cannot pick up garbage.
    real = np.asarray(out.mask)
    assert np.all(np.asarray(out.tokens)[~real] == 0)
    assert len(set(np.asarray(mask).sum(1))) > 1  # examples really do have different lengths


def test_all_padding_example_is_finite():
    model, kind, variables, apply = initialised("transformer")
    ids = np.zeros((4, 7), np.int32)
    out = apply(variables, ids, None)
    assert np.isfinite(np.asarray(out.pooled)).all()
    np.testing.assert_array_equal(out.pooled, 0)


def test_causal_text_transformer_ignores_future_tokens():
    model = encoders.create("transformer", vocab_size=20, max_len=8, causal=True, pool="last", **TINY_T)
    ids = np.array([[3, 4, 5, 6, 7]], np.int32)
    variables = jit(model.init)(KEY, ids)
    apply = jit(model.apply)
    a = apply(variables, ids)
    b = apply(variables, np.array([[3, 4, 5, 9, 11]], np.int32))
    np.testing.assert_allclose(a.tokens[:, :3], b.tokens[:, :3], rtol=1e-5, atol=1e-6)
    assert np.abs(np.asarray(a.tokens[:, 3:] - b.tokens[:, 3:])).max() > 1e-3
    np.testing.assert_allclose(a.pooled, a.tokens[:, -1], rtol=1e-6)


# ------------------------------------------------------------------ jit + grad: overfit a tiny batch
class _Probe(nn.Module):
    encoder: nn.Module
    num_classes: int = 4

    @nn.compact
    def __call__(self, x, mask, train):
        return nn.Dense(self.num_classes)(self.encoder(x, mask, train=train).pooled)


# video_vit's joint mode shares everything but the token layout with the factorised
# one (exercised by the padding and shape tests), so one video_vit run is enough.
@pytest.mark.parametrize("key", [k for k in CASES if k != "video_vit_joint"])
def test_overfits_tiny_batch(key):
    """30 Adam steps (one compiled scan) on 4 examples: the loss falls clearly, grads stay finite."""
    encoder, kind, enc_vars, apply = initialised(key)
    x, mask = make_inputs(kind, np.random.default_rng(2))
    labels = jnp.arange(4)
    probe = _Probe(encoder)
    # Reuse the encoder's variables (no second init to compile).
    width = apply(enc_vars, x, mask).pooled.shape[-1]
    head = np.random.default_rng(0).normal(size=(width, 4)) / np.sqrt(width)
    params = {"encoder": enc_vars["params"],
              "Dense_0": {"kernel": jnp.asarray(head, jnp.float32), "bias": jnp.zeros((4,))}}
    state = {k: {"encoder": v} for k, v in enc_vars.items() if k != "params"}
    tx = optax.adam(2e-2)

    def loss_fn(params, state):
        logits, new_state = probe.apply({"params": params, **state}, x, mask, True, mutable=list(state))
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), new_state

    @jit
    def train(params, state):
        def step(carry, _):
            params, state, opt = carry
            (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, state)
            finite = jnp.all(jnp.array([jnp.isfinite(g).all() for g in jax.tree.leaves(grads)]))
            updates, opt = tx.update(grads, opt, params)
            return (optax.apply_updates(params, updates), state, opt), (loss, finite)

        return jax.lax.scan(step, (params, state, tx.init(params)), length=30)[1]

    losses, finite = train(params, state)
    losses = np.asarray(losses)
    assert np.asarray(finite).all()
    assert losses[0] > 0.5 * np.log(4)
    assert losses[-1] < 0.3 * losses[0], losses


# ------------------------------------------------------------------ bf16
# One of each family (conv + BatchNorm, RNN, spectrogram transformer, factorised video
# transformer); the rest share their layers, and the shape tests trace every encoder.
@pytest.mark.parametrize("key", ["resnet", "lstm", "ast", "video_vit_fact"])
def test_bf16_compute_matches_f32(key):
    model32, kind, variables, apply32 = initialised(key)
    model16, _ = build(key, dtype=jnp.bfloat16)
    x, mask = make_inputs(kind, np.random.default_rng(3))
    ref = apply32(variables, x, mask)
    out = jit(model16.apply)(variables, x, mask)
    assert out.pooled.dtype == jnp.bfloat16 and out.tokens.dtype == jnp.bfloat16
    got = np.asarray(out.pooled, np.float32)
    ref = np.asarray(ref.pooled)
    assert np.isfinite(got).all()
    scale = np.abs(ref).max()
    assert np.abs(got - ref).max() < 0.1 * scale + 0.05, (np.abs(got - ref).max(), scale)


def test_bf16_params_storage():
    model = encoders.create("vit", patch_size=4, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16, **TINY_T)
    x = jnp.ones((1, 8, 8, 3))
    _, variables = _shapes(model, x)
    assert {leaf.dtype for leaf in jax.tree.leaves(nn.unbox(variables["params"]))} == {jnp.dtype(jnp.bfloat16)}


# ------------------------------------------------------------------ ResNet BatchNorm
def test_resnet_batch_stats_train_and_eval():
    model, kind, variables, apply = initialised("resnet")
    train = jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))
    x, _ = make_inputs(kind, np.random.default_rng(4))
    x = 3.0 * x + 2.0  # mean/var far from the initial running averages (0, 1)
    out_train, updates = train(variables, x)
    old = variables["batch_stats"]["stem_bn"]
    new = updates["batch_stats"]["stem_bn"]
    # Running averages move 10% of the way to this batch's statistics (momentum 0.9).
    kernel = np.asarray(nn.unbox(variables["params"])["stem_conv"]["kernel"])
    feats = np.asarray(jax.lax.conv_general_dilated(
        jnp.asarray(x), jnp.asarray(kernel), (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
    np.testing.assert_allclose(new["mean"], 0.9 * old["mean"] + 0.1 * feats.mean((0, 1, 2)), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(new["var"], 0.9 * old["var"] + 0.1 * feats.var((0, 1, 2)), rtol=1e-3, atol=1e-5)
    # Eval mode uses the stored averages: its output depends on them and matches no batch statistics.
    eval_old = apply(variables, x)
    eval_new = apply({**variables, **updates}, x)
    assert np.abs(np.asarray(eval_old.pooled - eval_new.pooled)).max() > 1e-4
    # ... and eval is per-example (no batch statistics): one example alone gives the same result.
    # Eval is per-example (running averages), train is not (batch statistics): swapping
    # the other examples changes a train output but not an eval output.
    x_swap = np.concatenate([x[:1], x[1:][::-1] * 0.5], axis=0)
    np.testing.assert_allclose(apply({**variables, **updates}, x_swap).pooled[0], eval_new.pooled[0],
                               rtol=1e-4, atol=1e-5)
    assert np.abs(np.asarray(train(variables, x_swap)[0].pooled[0] - out_train.pooled[0])).max() > 1e-4


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    "name,config,x,mask,match",
    [
        ("cnn", {}, np.zeros((2, 8, 8)), None, r"cnn encoder: expected \(B, H, W, C\)"),
        ("vit", dict(patch_size=3, **TINY_T), np.zeros((1, 8, 8, 3)), None, "not a multiple of patch_size=3"),
        ("resnet", dict(depth=20, width=4), np.zeros((1, 8, 8, 3)), None, "depth must be one of"),
        ("resnet", dict(width=4), np.zeros((1, 8, 8, 3)), np.ones((1, 64), bool), "images have no padding"),
        ("lstm", dict(vocab_size=5), np.zeros((2, 3), np.float32), None, "token ids must be integers"),
        ("transformer", dict(vocab_size=5, max_len=4, **TINY_T), np.ones((1, 6), np.int32), None,
         "6 tokens exceed the configured maximum 4 .raise the max_len option"),
        ("transformer", dict(vocab_size=5, causal=True, pool="cls", **TINY_T), np.ones((1, 2), np.int32), None,
         "pool='cls' with causal=True"),
        ("gru", dict(vocab_size=5), np.ones((2, 3), np.int32), np.ones((2, 4), bool), r"mask must be .* \(2, 3\)"),
        ("audio_cnn", dict(n_mels=8), np.zeros((2, 5, 7)), None, "7 mel bins, config n_mels=8"),
        ("ast", dict(n_mels=10, patch_freq=4), np.zeros((2, 500)), None, "n_mels=10 is not a multiple"),
        ("ast", {}, np.zeros((2, 3, 4, 5)), None, r"expected a \(B, N\) waveform"),
        ("video_vit", dict(tubelet_size=(2, 4, 4), attention="divided", **TINY_T), np.zeros((1, 2, 8, 8, 3)), None,
         "attention must be 'joint' or 'factorised'"),
        ("video_cnn", {}, np.zeros((1, 2, 8, 8)), None, r"video_cnn encoder: expected \(B, F, H, W, C\)"),
    ],
)
def test_bad_inputs_raise_clear_errors(name, config, x, mask, match):
    model = encoders.create(name, **config)
    with pytest.raises(ValueError, match=match):
        jax.eval_shape(lambda x, m: model.init(KEY, x, m), x, mask)


def test_error_type_is_value_error():
    assert issubclass(EncoderInputError, ValueError)


def test_flatten_pool_keeps_position_and_ignores_padding():
    """pool="flatten": pooled is a Dense over the whole map, so moving a feature changes it;
    audio padding (masked samples) still cannot change it."""
    import mmjax

    img = np.zeros((1, 8, 8, 1), np.float32)
    img[0, 1, 1] = 1.0
    moved = np.roll(img, 4, axis=2)
    cnn = mmjax.encoders.create("cnn", features=(4,), convs_per_stage=1, out_dim=6, pool="flatten")
    v = cnn.init(jax.random.key(0), img)
    a, b = cnn.apply(v, img).pooled, cnn.apply(v, moved).pooled
    assert a.shape == (1, 6) and not np.allclose(a, b)

    audio = mmjax.encoders.create("audio_cnn", sample_rate=8000, n_fft=256, hop_length=128, n_mels=16,
                                  features=(4,), out_dim=6, pool="flatten")
    wave = np.random.default_rng(0).normal(size=(1, 4000)).astype(np.float32)
    mask = np.ones((1, 4000), bool)
    mask[:, 3000:] = False
    garbage = wave.copy()
    garbage[:, 3000:] = 50.0
    va = audio.init(jax.random.key(0), wave, mask)
    np.testing.assert_allclose(audio.apply(va, wave, mask).pooled, audio.apply(va, garbage, mask).pooled,
                               rtol=1e-5, atol=1e-5)
