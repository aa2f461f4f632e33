"""Moved to :mod:`mmjax.losses.contrastive`; this module re-exports it for existing imports."""
from mmjax.losses.contrastive import (
    CLIP_INIT_LOG_SCALE,
    CLIP_MAX_LOG_SCALE,
    SIGLIP_INIT_BIAS,
    SIGLIP_INIT_LOG_SCALE,
    ContrastiveLossError,
    clip_loss,
    clip_loss_shard,
    clip_scale,
    ring_siglip_loss,
    sharded_clip_loss,
    sharded_siglip_loss,
    siglip_loss,
    siglip_loss_shard,
)

__all__ = [
    "CLIP_INIT_LOG_SCALE",
    "CLIP_MAX_LOG_SCALE",
    "SIGLIP_INIT_BIAS",
    "SIGLIP_INIT_LOG_SCALE",
    "ContrastiveLossError",
    "clip_loss",
    "clip_loss_shard",
    "clip_scale",
    "ring_siglip_loss",
    "sharded_clip_loss",
    "sharded_siglip_loss",
    "siglip_loss",
    "siglip_loss_shard",
]
