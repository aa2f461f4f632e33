"""``video_frames``: an image encoder on every frame, pooled over time (TSN-style).

The frame-level baseline of video recognition: Karpathy et al. 2014's "single
frame" and "late fusion" nets and Temporal Segment Networks (Wang et al. 2016)
run one 2D net with shared weights on each frame and pool its outputs over
time. On small clips it is much cheaper than 3D convolutions (XLA's CPU 3D
convs are slow) and, with ``temporal_pool="max"``, picks the frames where the
object is best seen (say, not behind an occluder).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.encoders.common import EncoderInputError, masked_mean
from mmjax.encoders.registry import ENCODERS, register
from mmjax.encoders.video import _video_inputs
from mmjax.registry import BadSizeError, check_sizes
from mmjax.types import Encoded

Array = jax.Array
TEMPORAL_POOLS = ("mean", "max")


def masked_max(x: Array, mask: Array) -> Array:
    """x (B, T, D), mask (B, T) bool -> (B, D) max over the True positions; zeros for a row with none."""
    low = jnp.finfo(x.dtype).min
    pooled = jnp.where(mask[..., None], x, low).max(axis=1)
    return jnp.where(mask.any(axis=1)[:, None], pooled, 0)


@register("video_frames")
class VideoFramesEncoder(nn.Module):
    """(B, F, H, W, C) clip -> Encoded with one token per frame: ``frame`` on each frame, then a temporal pool.

    Tokens (B, F, D): the frame encoder's pooled vector of each frame (its
    weights shared by all frames); padded frames (``mask`` False) are zeroed
    before the frame encoder, zero in the tokens and left out of the pool.
    Pooled (B, D): masked mean or max of the tokens over time.

    Attributes:
      frame: the image encoder's config, ``{"name": ..., **options}``, e.g.
        ``{"name": "cnn", "features": (16, 32), "out_dim": 64, "pool": "flatten"}``.
      temporal_pool: "max" (per feature, the frame where it is strongest) or "mean".
    """

    frame: Mapping[str, Any]
    temporal_pool: str = "max"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def _frame_encoder(self) -> nn.Module:
        spec = dict(self.frame)
        if "name" not in spec:
            raise EncoderInputError("video_frames encoder: frame needs a 'name' (an image encoder such as 'cnn')")
        constructor = ENCODERS.get(spec.pop("name"))
        spec.setdefault("dtype", self.dtype)
        spec.setdefault("param_dtype", self.param_dtype)
        try:
            check_sizes(constructor, spec, "frame.")
        except BadSizeError as e:
            raise EncoderInputError(f"video_frames encoder: {e}") from None
        try:
            return constructor(**spec, name="frame")
        except TypeError as e:
            raise EncoderInputError(f"video_frames encoder: bad frame options: {e}") from None

    @nn.compact
    def __call__(self, x: Array, mask: Optional[Array] = None, *, train: bool = False) -> Encoded:
        x, mask = _video_inputs("video_frames", x, mask)
        if self.temporal_pool not in TEMPORAL_POOLS:
            raise EncoderInputError(
                f"video_frames encoder: temporal_pool must be one of {TEMPORAL_POOLS}, got {self.temporal_pool!r}"
            )
        b = x.shape[0]
        frames = einops.rearrange(x, "b f h w c -> (b f) h w c")
        per_frame = self._frame_encoder()(frames, train=train).pooled
        tokens = einops.rearrange(per_frame, "(b f) d -> b f d", b=b)
        tokens = jnp.where(mask[..., None], tokens, 0)
        pool = masked_max if self.temporal_pool == "max" else masked_mean
        return Encoded(pooled=pool(tokens, mask), tokens=tokens, mask=mask)
