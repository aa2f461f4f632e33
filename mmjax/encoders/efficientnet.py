"""``efficientnet_lite0``: EfficientNet-Lite0 (Tan & Le 2019, "Lite" edge variant) in Flax.

Lite0 is EfficientNet-B0 without squeeze-and-excitation, with ReLU6 instead
of swish and a fixed 32-channel stem / 1280-channel head:

    stem  conv3x3/2 (32) BN ReLU6
    MBConv stages (expand, kernel, stride, out, repeats):
      (1,3,1,16,1) (6,3,2,24,2) (6,5,2,40,2) (6,3,2,80,3)
      (6,5,1,112,3) (6,5,2,192,4) (6,3,1,320,1)
    head  conv1x1 (1280) BN ReLU6, global average pool, [dropout, fc 1000]

Convolutions use TensorFlow's "SAME" padding (the weights come from the TF
checkpoint), which pads less before than after for even inputs and stride 2.
Use :func:`mmjax.encoders.pretrained.load_efficientnet_lite0` for the
ImageNet weights and their preprocessing.
"""
from __future__ import annotations

import functools
from typing import Any, Dict, Mapping, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax import errors
from mmjax.encoders.registry import register
from mmjax.layers import dense
from mmjax.sharding import CLASSES, CONV_IN, CONV_OUT, NORM, logical
from mmjax.types import Encoded

Array = jax.Array

# (expand_ratio, kernel, stride, out_channels, repeats) per stage.
LITE0_STAGES: Tuple[Tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
BN_EPSILON = 1e-3
# Inception-style normalisation the Lite models were trained with (on 0..255 RGB).
MEAN_RGB = (127.0, 127.0, 127.0)
STDDEV_RGB = (128.0, 128.0, 128.0)
IMAGE_SIZE = 224
CROP_PADDING = 32  # eval crop: the central IMAGE_SIZE / (IMAGE_SIZE + 32) of the shorter side


class EfficientNetInputError(errors.InputError):
    """Bad input or config for the efficientnet_lite0 encoder."""


def relu6(x: Array) -> Array:
    return jnp.clip(x, 0, 6)


class ConvBN(nn.Module):
    """Conv (SAME padding, no bias) -> BatchNorm [-> ReLU6]: (B, H, W, Cin) -> (B, H/s, W/s, C)."""

    features: int
    kernel: int = 1
    stride: int = 1
    depthwise: bool = False
    activation: bool = True
    bn_train: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        axes = (None, None, None, CONV_OUT) if self.depthwise else (None, None, CONV_IN, CONV_OUT)
        x = nn.Conv(
            self.features,
            (self.kernel, self.kernel),
            strides=(self.stride, self.stride),
            padding="SAME",
            feature_group_count=x.shape[-1] if self.depthwise else 1,
            use_bias=False,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=logical(nn.initializers.variance_scaling(2.0, "fan_out", "normal"), axes),
            name="conv",
        )(x)
        x = nn.BatchNorm(
            use_running_average=not (train and self.bn_train),
            momentum=0.99,
            epsilon=BN_EPSILON,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            scale_init=logical(nn.initializers.ones_init(), (NORM,)),
            bias_init=logical(nn.initializers.zeros_init(), (NORM,)),
            name="bn",
        )(x)
        return relu6(x) if self.activation else x


class MBConv(nn.Module):
    """Inverted residual: [expand 1x1] -> depthwise kxk/s -> project 1x1 (+ input if shapes match)."""

    expand_ratio: int
    kernel: int
    stride: int
    features: int
    bn_train: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        cb = functools.partial(ConvBN, bn_train=self.bn_train, dtype=self.dtype, param_dtype=self.param_dtype)
        cin = x.shape[-1]
        h = x
        if self.expand_ratio != 1:
            h = cb(cin * self.expand_ratio, name="expand")(h, train)
        h = cb(h.shape[-1], self.kernel, self.stride, depthwise=True, name="depthwise")(h, train)
        h = cb(self.features, activation=False, name="project")(h, train)
        if self.stride == 1 and cin == self.features:
            h = h + x
        return h


@register("efficientnet_lite0")
class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 image encoder: images (B, H, W, 3) -> Encoded.

    Inputs are RGB images already normalised as the weights expect
    (``(pixel - 127) / 128``, see :func:`preprocess`); 224 x 224 is the
    training size but any size works (SAME padding).

    Returns ``Encoded(pooled, tokens (B, h*w, 1280), mask (B, h*w) all True)``
    with ``tokens`` the final feature map positions (7 x 7 = 49 at 224) and
    ``pooled`` their mean (B, 1280), or with ``include_top`` the ImageNet
    classifier logits (B, num_classes) computed from that mean (tokens stay
    the 1280-d features).

    BatchNorm uses the stored running statistics even when ``train=True``
    unless ``bn_train`` is set (then ``batch_stats`` must be mutable); frozen
    statistics are the usual choice when fine-tuning with small batches.

    Attributes:
      include_top: return classifier logits as ``pooled``.
      num_classes: classifier width (1000 for the ImageNet weights).
      dropout_rate: dropout before the classifier (train only).
      bn_train: update BatchNorm statistics when training.
    """

    include_top: bool = False
    num_classes: int = 1000
    dropout_rate: float = 0.2
    bn_train: bool = False
    stages: Sequence[Tuple[int, int, int, int, int]] = LITE0_STAGES
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images: Array, mask: Array | None = None, *, train: bool = False) -> Encoded:
        """images (B, H, W, 3) float; ``mask`` is ignored (images have no padding)."""
        del mask
        if images.ndim != 4 or images.shape[-1] != 3:
            raise EfficientNetInputError(
                f"efficientnet_lite0: images must be (B, H, W, 3) RGB, got shape {tuple(images.shape)}"
            )
        if not jnp.issubdtype(images.dtype, jnp.floating):
            raise EfficientNetInputError(
                f"efficientnet_lite0: images must be float and normalised (see preprocess), got {images.dtype}"
            )
        cb = functools.partial(ConvBN, bn_train=self.bn_train, dtype=self.dtype, param_dtype=self.param_dtype)
        x = cb(STEM_CHANNELS, 3, 2, name="stem")(images.astype(self.dtype), train)
        i = 0
        for expand, kernel, stride, features, repeats in self.stages:
            for r in range(repeats):
                x = MBConv(
                    expand, kernel, stride if r == 0 else 1, features,
                    bn_train=self.bn_train, dtype=self.dtype, param_dtype=self.param_dtype,
                    name=f"block_{i}",
                )(x, train)
                i += 1
        x = cb(HEAD_CHANNELS, name="head")(x, train)
        b, h, w, c = x.shape
        tokens = x.reshape(b, h * w, c)
        pooled = tokens.astype(jnp.float32).mean(axis=1).astype(self.dtype)
        if self.include_top:
            pooled = nn.Dropout(self.dropout_rate)(pooled, deterministic=not train)
            pooled = dense(self.num_classes, axes=(CONV_OUT, CLASSES), dtype=self.dtype,
                           param_dtype=self.param_dtype, name="classifier")(pooled)
        return Encoded(pooled=pooled, tokens=tokens, mask=jnp.ones((b, h * w), bool))


def preprocess(image: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """Eval preprocessing of the Lite models: (H, W, 3) or (B, H, W, 3) RGB -> (B, size, size, 3) float32.

    Takes the central ``size / (size + 32)`` square of the shorter side (the
    TensorFlow EfficientNet eval crop), resizes it to ``size`` (bicubic,
    antialiased) and maps 0..255 to ``(x - 127) / 128``. Integer inputs are
    0..255; float inputs in [0, 1] are scaled by 255 first.
    """
    image = np.asarray(image)
    batch = image if image.ndim == 4 else image[None]
    if batch.ndim != 4 or batch.shape[-1] != 3:
        raise EfficientNetInputError(
            f"efficientnet_lite0 preprocess: expected (H, W, 3) or (B, H, W, 3) RGB, got {image.shape}"
        )
    if np.issubdtype(batch.dtype, np.integer):
        batch = batch.astype(np.float32)
    else:
        batch = batch.astype(np.float32)
        if batch.max(initial=0.0) <= 1.0:
            batch = batch * 255.0
    _, h, w, _ = batch.shape
    crop = int(round(size / (size + CROP_PADDING) * min(h, w)))
    top, left = (h - crop + 1) // 2, (w - crop + 1) // 2
    batch = batch[:, top:top + crop, left:left + crop]
    out = jax.image.resize(jnp.asarray(batch), (batch.shape[0], size, size, 3), "bicubic", antialias=True)
    out = np.clip(np.asarray(out), 0.0, 255.0)
    mean = np.asarray(MEAN_RGB, np.float32)
    std = np.asarray(STDDEV_RGB, np.float32)
    return ((out - mean) / std).astype(np.float32)


def convert_state_dict(
    state: Mapping[str, np.ndarray], stages: Sequence[Tuple[int, int, int, int, int]] = LITE0_STAGES
) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """``efficientnet_pytorch``-layout state dict (numpy) -> (params, batch_stats).

    Torch conv kernels are (out, in/groups, kh, kw) and Flax's (kh, kw, in/groups,
    out); torch BatchNorm ``weight/bias/running_mean/running_var`` become
    ``scale/bias`` params and ``mean/var`` batch stats.
    """

    def get(key: str) -> np.ndarray:
        if key not in state:
            raise EfficientNetInputError(f"efficientnet_lite0: state dict has no {key!r}")
        return np.asarray(state[key], np.float32)

    def conv_bn(conv: str, bn: str) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        params = {
            "conv": {"kernel": get(f"{conv}.weight").transpose(2, 3, 1, 0)},
            "bn": {"scale": get(f"{bn}.weight"), "bias": get(f"{bn}.bias")},
        }
        stats = {"bn": {"mean": get(f"{bn}.running_mean"), "var": get(f"{bn}.running_var")}}
        return params, stats

    params: Dict[str, Any] = {}
    stats: Dict[str, Any] = {}
    params["stem"], stats["stem"] = conv_bn("_conv_stem", "_bn0")
    i = 0
    for expand, _k, _s, _f, repeats in stages:
        for _ in range(repeats):
            p, s = {}, {}
            pre = f"_blocks.{i}."
            if expand != 1:
                p["expand"], s["expand"] = conv_bn(pre + "_expand_conv", pre + "_bn0")
            p["depthwise"], s["depthwise"] = conv_bn(pre + "_depthwise_conv", pre + "_bn1")
            p["project"], s["project"] = conv_bn(pre + "_project_conv", pre + "_bn2")
            params[f"block_{i}"], stats[f"block_{i}"] = p, s
            i += 1
    if f"_blocks.{i}._depthwise_conv.weight" in state:
        raise EfficientNetInputError(f"efficientnet_lite0: state dict has more than {i} blocks")
    params["head"], stats["head"] = conv_bn("_conv_head", "_bn1")
    if "_fc.weight" in state:
        params["classifier"] = {"kernel": get("_fc.weight").T, "bias": get("_fc.bias")}
    return params, stats
