"""Image encoders: ``cnn`` (small VGG-style), ``resnet`` (18/34/50/101/152), ``vit``.

Inputs are (B, H, W, C) float images. Images have no padding, so ``mask``
must be None; every output token is real. Tokens are the positions of the
final feature map (row-major), or the ViT patches.
"""
from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.encoders.common import (
    block_max_pool,
    EncoderInputError,
    flatten_pool,
    channel_norm,
    check_rank,
    cls_token,
    conv,
    embedding_param,
    no_mask,
)
from mmjax.encoders.registry import register
from mmjax.layers import TransformerStack, dense
from mmjax.sharding import CONV_OUT, EMBED, LENGTH, NORM, logical
from mmjax.types import Encoded

Array = jax.Array


def _feature_map_to_encoded(h: Array, project: Optional[nn.Module]) -> Encoded:
    tokens = einops.rearrange(h, "b h w c -> b (h w) c")
    if project is not None:
        tokens = project(tokens)
    return Encoded(pooled=tokens.mean(1), tokens=tokens, mask=jnp.ones(tokens.shape[:2], bool))


@register("cnn")
class CnnEncoder(nn.Module):
    """A small VGG-style conv net for 8x8 to 64x64 images: (B, H, W, C) -> Encoded.

    Per stage: ``convs_per_stage`` x [3x3 conv -> LayerNorm(channels) -> ReLU],
    then 2x2 max-pool (SAME, so odd and 1-pixel maps are fine). Tokens are the
    (H / 2^S) * (W / 2^S) final positions, pooled = their mean
    (``pool="mean"``) or a Dense layer over the flattened final map
    (``pool="flatten"``, LeNet-style: keeps where features are, which small
    nets with a short receptive field need; fixes the input size at init).

    Attributes:
      features: channels of each stage, e.g. (32, 64, 128).
      convs_per_stage: conv layers before each pool.
      out_dim: optional Dense projection of every token to this width
        (with ``pool="flatten"``, also the pooled width; required there).
      pool: "mean" or "flatten".
    """

    features: Sequence[int] = (32, 64, 128)
    convs_per_stage: int = 2
    out_dim: Optional[int] = None
    pool: str = "mean"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, mask: Optional[Array] = None, *, train: bool = False) -> Encoded:
        check_rank("cnn", x, 4, "(B, H, W, C) image")
        no_mask("cnn", mask)
        h = x.astype(self.dtype)
        for s, width in enumerate(self.features):
            for j in range(self.convs_per_stage):
                h = conv(width, (3, 3), dtype=self.dtype, param_dtype=self.param_dtype,
                         name=f"conv_{s}_{j}")(h)
                h = channel_norm(self.dtype, self.param_dtype, name=f"norm_{s}_{j}")(h)
                h = nn.relu(h)
            h = block_max_pool(h, (2, 2))
        project = None
        if self.out_dim is not None:
            project = dense(self.out_dim, axes=(CONV_OUT, EMBED), dtype=self.dtype,
                            param_dtype=self.param_dtype, name="proj")
        encoded = _feature_map_to_encoded(h, project)
        if self.pool == "mean":
            return encoded
        return encoded.replace(pooled=flatten_pool("cnn", self, h.reshape(h.shape[0], -1)))


class _ResNetBlock(nn.Module):
    """Basic block (two 3x3 convs), post-activation as in He et al. 2016."""

    filters: int
    strides: int
    conv: Any
    norm: Any

    @nn.compact
    def __call__(self, x: Array) -> Array:
        residual = x
        y = self.conv(self.filters, (3, 3), strides=self.strides, name="conv1")(x)
        y = nn.relu(self.norm(name="bn1")(y))
        y = self.conv(self.filters, (3, 3), name="conv2")(y)
        # Zero-init the last scale so each block starts as the identity (Goyal et al. 2017).
        y = self.norm(scale_init=logical(nn.initializers.zeros_init(), (NORM,)), name="bn2")(y)
        if residual.shape != y.shape:
            residual = self.conv(self.filters, (1, 1), strides=self.strides, name="proj_conv")(residual)
            residual = self.norm(name="proj_bn")(residual)
        return nn.relu(residual + y)


class _BottleneckBlock(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1 (4x filters) bottleneck block, ResNet v1.5."""

    filters: int
    strides: int
    conv: Any
    norm: Any

    @nn.compact
    def __call__(self, x: Array) -> Array:
        residual = x
        y = nn.relu(self.norm(name="bn1")(self.conv(self.filters, (1, 1), name="conv1")(x)))
        y = self.conv(self.filters, (3, 3), strides=self.strides, name="conv2")(y)
        y = nn.relu(self.norm(name="bn2")(y))
        y = self.conv(self.filters * 4, (1, 1), name="conv3")(y)
        y = self.norm(scale_init=logical(nn.initializers.zeros_init(), (NORM,)), name="bn3")(y)
        if residual.shape != y.shape:
            residual = self.conv(self.filters * 4, (1, 1), strides=self.strides, name="proj_conv")(residual)
            residual = self.norm(name="proj_bn")(residual)
        return nn.relu(residual + y)


_RESNET_STAGES = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


@register("resnet")
class ResNetEncoder(nn.Module):
    """ResNet-18/34/50/101/152: (B, H, W, C) -> Encoded with width ``2^(S-1) * width``
    (basic blocks) or ``2^(S+1) * width`` (bottleneck, depth >= 50), S = number of
    stages (4 unless ``stage_sizes`` says otherwise).

    BatchNorm normalises with batch statistics and updates the ``batch_stats``
    collection when ``train=True`` (apply with ``mutable=["batch_stats"]``), and
    uses the running averages when ``train=False``.

    Attributes:
      depth: 18, 34, 50, 101 or 152 (basic blocks below 50, bottleneck blocks from 50).
      stage_sizes: optional blocks per stage overriding ``depth``'s, e.g. (1, 1, 1, 1)
        for a ResNet-10 (block type still follows ``depth``).
      width: channels of the first stage (64 in the paper; 4-8 for tests).
      small_inputs: CIFAR-style stem (3x3 conv, stride 1, no max-pool) for
        images of 32x32 or less; otherwise the ImageNet 7x7/2 conv + 3x3/2 pool.
      bn_momentum: decay of the running averages.
      bn_axis_name: a pmap/shard_map axis name to average batch statistics
        across devices (None: per-device statistics).
      out_dim: optional Dense projection of every token to this width.
    """

    depth: int = 18
    stage_sizes: Optional[Sequence[int]] = None
    width: int = 64
    small_inputs: bool = False
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    bn_axis_name: Optional[str] = None
    out_dim: Optional[int] = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, mask: Optional[Array] = None, *, train: bool = False) -> Encoded:
        check_rank("resnet", x, 4, "(B, H, W, C) image")
        no_mask("resnet", mask)
        if self.depth not in _RESNET_STAGES:
            raise EncoderInputError(
                f"resnet encoder: depth must be one of {sorted(_RESNET_STAGES)}, got {self.depth}"
            )
        conv_ = functools.partial(conv, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
                                  kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"))
        norm = functools.partial(
            nn.BatchNorm,
            use_running_average=not train,
            momentum=self.bn_momentum,
            epsilon=self.bn_epsilon,
            axis_name=self.bn_axis_name,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            scale_init=logical(nn.initializers.ones_init(), (NORM,)),
            bias_init=logical(nn.initializers.zeros_init(), (NORM,)),
        )
        block_cls = _BottleneckBlock if self.depth >= 50 else _ResNetBlock
        h = x.astype(self.dtype)
        if self.small_inputs:
            h = conv_(self.width, (3, 3), name="stem_conv")(h)
            h = nn.relu(norm(name="stem_bn")(h))
        else:
            h = conv_(self.width, (7, 7), strides=2, padding=((3, 3), (3, 3)), name="stem_conv")(h)
            h = nn.relu(norm(name="stem_bn")(h))
            h = nn.max_pool(h, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        stages = _RESNET_STAGES[self.depth] if self.stage_sizes is None else tuple(self.stage_sizes)
        if not stages or min(stages) < 1:
            raise EncoderInputError(f"resnet encoder: stage_sizes must be positive block counts, got {stages}")
        for s, blocks in enumerate(stages):
            for b in range(blocks):
                strides = 2 if s > 0 and b == 0 else 1
                h = block_cls(self.width * 2**s, strides, conv_, norm, name=f"stage{s + 1}_block{b + 1}")(h)
        project = None
        if self.out_dim is not None:
            project = dense(self.out_dim, axes=(CONV_OUT, EMBED), dtype=self.dtype,
                            param_dtype=self.param_dtype, name="proj")
        return _feature_map_to_encoded(h, project)


@register("vit")
class VitEncoder(nn.Module):
    """Vision Transformer (Dosovitskiy et al. 2021): (B, H, W, C) -> Encoded(hidden_dim).

    Non-overlapping ``patch_size`` patches are linearly embedded (a conv with
    kernel = stride = patch), learned position embeddings are added (sized for
    the image shape seen at init), then a pre-LN TransformerStack.
    ``pool="cls"`` prepends a class token and pools it; ``"mean"`` averages the
    patch tokens. ``tokens`` are the (H/p * W/p) patch outputs (without the class token).

    Attributes:
      patch_size: square patch side p; H and W must be multiples of it.
      scan / remat: passed to TransformerStack (scan over layers, rematerialise).
    """

    patch_size: int = 16
    hidden_dim: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    dropout_rate: float = 0.0
    pool: str = "cls"
    scan: bool = False
    remat: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, mask: Optional[Array] = None, *, train: bool = False) -> Encoded:
        check_rank("vit", x, 4, "(B, H, W, C) image")
        no_mask("vit", mask)
        if self.pool not in ("cls", "mean"):
            raise EncoderInputError(f"vit encoder: pool must be 'cls' or 'mean', got {self.pool!r}")
        p = self.patch_size
        if x.shape[1] % p or x.shape[2] % p:
            raise EncoderInputError(
                f"vit encoder: image size {x.shape[1]}x{x.shape[2]} is not a multiple of patch_size={p}"
            )
        h = conv(self.hidden_dim, (p, p), strides=p, padding="VALID", dtype=self.dtype,
                 param_dtype=self.param_dtype, name="patch_embed")(x.astype(self.dtype))
        h = einops.rearrange(h, "b h w d -> b (h w) d")
        b, n, d = h.shape
        h = h + embedding_param(self, "pos_embedding", (n, d), (LENGTH, EMBED), self.param_dtype).astype(self.dtype)
        if self.pool == "cls":
            cls = cls_token(self, d, self.param_dtype).astype(self.dtype)
            h = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, d)), h], axis=1)
        h = nn.Dropout(self.dropout_rate)(h, deterministic=not train)
        h = TransformerStack(
            num_layers=self.num_layers, num_heads=self.num_heads, mlp_dim=self.mlp_dim,
            dropout_rate=self.dropout_rate, scan=self.scan, remat=self.remat,
            dtype=self.dtype, param_dtype=self.param_dtype, name="transformer",
        )(h, train=train)
        if self.pool == "cls":
            pooled, tokens = h[:, 0], h[:, 1:]
        else:
            pooled, tokens = h.mean(1), h
        return Encoded(pooled=pooled, tokens=tokens, mask=jnp.ones((b, n), bool))
