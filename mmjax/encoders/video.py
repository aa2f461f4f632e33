"""Video encoders: ``video_vit`` (ViViT, joint or factorised attention) and ``video_cnn`` (3D convs).

Inputs are (B, F, H, W, C) float clips with an optional (B, F) bool frame mask
(right padding). Padded frames are zeroed before anything else, tokens built
only from padded frames are padding in the output mask, and real tokens never
attend to them, so appending padded frames does not change the pooled output.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.encoders.common import (
    block_max_pool,
    EncoderInputError,
    channel_norm,
    check_mask,
    check_rank,
    cls_token,
    conv,
    downsample_mask,
    embedding_param,
    masked_mean,
    sliced_positions,
)
from mmjax.encoders.registry import register
from mmjax.layers import TransformerStack, dense
from mmjax.sharding import CONV_OUT, EMBED, LENGTH
from mmjax.types import Encoded

Array = jax.Array


def _video_inputs(name: str, x: Array, mask: Optional[Array]) -> Tuple[Array, Array]:
    check_rank(name, x, 5, "(B, F, H, W, C) video")
    mask = check_mask(name, mask, x.shape[:2], "(B, F) bool over frames")
    if mask is None:
        mask = jnp.ones(x.shape[:2], bool)
    return jnp.where(mask[:, :, None, None, None], x, 0), mask


def _pool(h: Array, mask: Array, pool: str) -> Tuple[Array, Array]:
    """(B, 1 + T, D) or (B, T, D) stack output -> (pooled (B, D), tokens (B, T, D) with padding zeroed)."""
    if pool == "cls":
        pooled, h = h[:, 0], h[:, 1:]
    tokens = jnp.where(mask[..., None], h, 0)
    if pool == "mean":
        pooled = masked_mean(tokens, mask)
    return pooled, tokens


@register("video_vit")
class VideoVitEncoder(nn.Module):
    """ViViT (Arnab et al. 2021): tubelet embedding + transformer: (B, F, H, W, C) -> Encoded(hidden_dim).

    Tubelets of ``tubelet_size`` = (t, p, p) are embedded by a 3D conv with
    kernel = stride = tubelet (frames are zero-padded to a multiple of t).
    Position = learned spatial embedding (sized at init) + learned temporal
    embedding (first T rows of a ``max_time_tokens`` table).

    ``attention="joint"``: one TransformerStack of ``num_layers`` over all
    T * S space-time tokens; tokens (B, T * S, D) in time-major order.
    ``attention="factorised"`` (ViViT model 2): a spatial stack of
    ``num_layers`` runs on each time step's S tokens, each time step is
    summarised (its class token, or the mean), and a temporal stack of
    ``temporal_layers`` runs over the T summaries; tokens (B, T, D).
    ``pool``: class token ("cls") or masked mean ("mean"), at every level.
    """

    tubelet_size: Sequence[int] = (2, 16, 16)
    hidden_dim: int = 768
    num_layers: int = 12
    temporal_layers: int = 4
    num_heads: int = 12
    mlp_dim: int = 3072
    attention: str = "joint"
    pool: str = "cls"
    max_time_tokens: int = 64
    dropout_rate: float = 0.0
    scan: bool = False
    remat: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def _stack(self, num_layers: int, name: str) -> TransformerStack:
        return TransformerStack(
            num_layers=num_layers, num_heads=self.num_heads, mlp_dim=self.mlp_dim,
            dropout_rate=self.dropout_rate, scan=self.scan, remat=self.remat,
            dtype=self.dtype, param_dtype=self.param_dtype, name=name,
        )

    def _with_cls(self, h: Array, mask: Array, name: str) -> Tuple[Array, Array]:
        if self.pool != "cls":
            return h, mask
        b, _, d = h.shape
        cls = cls_token(self, d, self.param_dtype, name).astype(self.dtype)
        h = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, d)), h], axis=1)
        return h, jnp.concatenate([jnp.ones((b, 1), bool), mask], axis=1)

    @nn.compact
    def __call__(self, x: Array, mask: Optional[Array] = None, *, train: bool = False) -> Encoded:
        x, mask = _video_inputs("video_vit", x, mask)
        if self.attention not in ("joint", "factorised"):
            raise EncoderInputError(
                f"video_vit encoder: attention must be 'joint' or 'factorised', got {self.attention!r}"
            )
        if self.pool not in ("cls", "mean"):
            raise EncoderInputError(f"video_vit encoder: pool must be 'cls' or 'mean', got {self.pool!r}")
        t, ph, pw = self.tubelet_size
        if x.shape[2] % ph or x.shape[3] % pw:
            raise EncoderInputError(
                f"video_vit encoder: frame size {x.shape[2]}x{x.shape[3]} is not a multiple of the "
                f"tubelet's spatial size {ph}x{pw}"
            )
        nt = -(-x.shape[1] // t)
        x = jnp.pad(x, ((0, 0), (0, nt * t - x.shape[1]), (0, 0), (0, 0), (0, 0)))
        h = conv(self.hidden_dim, (t, ph, pw), strides=(t, ph, pw), padding="VALID", dtype=self.dtype,
                 param_dtype=self.param_dtype, name="tubelet_embed")(x.astype(self.dtype))
        h = einops.rearrange(h, "b t h w d -> b t (h w) d")
        b, _, s, d = h.shape
        pos_t = sliced_positions(self, "time_embedding", nt, self.max_time_tokens, d, self.param_dtype,
                                 "time tokens", "video_vit", "max_time_tokens")
        pos_s = embedding_param(self, "space_embedding", (s, d), (LENGTH, EMBED), self.param_dtype)
        h = h + (pos_t[:, None, :] + pos_s[None, :, :]).astype(self.dtype)
        h = nn.Dropout(self.dropout_rate)(h, deterministic=not train)
        tmask = downsample_mask(mask, t, nt)  # (B, T)
        if self.attention == "joint":
            h = einops.rearrange(h, "b t s d -> b (t s) d")
            token_mask = einops.repeat(tmask, "b t -> b (t s)", s=s)
            h, attn_mask = self._with_cls(h, token_mask, "cls")
            h = self._stack(self.num_layers, "transformer")(h, attn_mask, train=train)
            pooled, tokens = _pool(h, token_mask, self.pool)
            return Encoded(pooled=pooled, tokens=tokens, mask=token_mask)
        # Factorised: every (example, time step) is one spatial sequence.
        frames = einops.rearrange(h, "b t s d -> (b t) s d")
        fmask = jnp.ones(frames.shape[:2], bool)
        frames, attn_mask = self._with_cls(frames, fmask, "spatial_cls")
        frames = self._stack(self.num_layers, "spatial_transformer")(frames, attn_mask, train=train)
        summary, _ = _pool(frames, fmask, self.pool)
        h = einops.rearrange(summary, "(b t) d -> b t d", b=b)
        h, attn_mask = self._with_cls(h, tmask, "temporal_cls")
        h = self._stack(self.temporal_layers, "temporal_transformer")(h, attn_mask, train=train)
        pooled, tokens = _pool(h, tmask, self.pool)
        return Encoded(pooled=pooled, tokens=tokens, mask=tmask)


@register("video_cnn")
class VideoCnnEncoder(nn.Module):
    """3D conv net: (B, F, H, W, C) -> Encoded with one token per pooled time step.

    Per stage: ``convs_per_stage`` x [3x3x3 conv -> LayerNorm(channels) -> ReLU],
    then max-pool 2x2x2 (or 1x2x2 when ``pool_time=False``). Padded frames are
    zeroed before every conv and pool (post-ReLU values are >= 0, so the zero
    fill leaves max-pooling unchanged). Tokens: spatial mean of the final map,
    (B, F', C) (projected to ``out_dim`` if set); pooled = masked mean.
    """

    features: Sequence[int] = (32, 64, 128)
    convs_per_stage: int = 1
    pool_time: bool = True
    out_dim: Optional[int] = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, mask: Optional[Array] = None, *, train: bool = False) -> Encoded:
        h, m = _video_inputs("video_cnn", x, mask)
        h = h.astype(self.dtype)
        window = (2, 2, 2) if self.pool_time else (1, 2, 2)
        for s, width in enumerate(self.features):
            for j in range(self.convs_per_stage):
                h = jnp.where(m[:, :, None, None, None], h, 0)
                h = conv(width, (3, 3, 3), dtype=self.dtype, param_dtype=self.param_dtype, name=f"conv_{s}_{j}")(h)
                h = nn.relu(channel_norm(self.dtype, self.param_dtype, name=f"norm_{s}_{j}")(h))
            h = jnp.where(m[:, :, None, None, None], h, 0)
            h = block_max_pool(h, window)
            m = downsample_mask(m, window[0], h.shape[1])
        tokens = h.mean((2, 3))
        if self.out_dim is not None:
            tokens = dense(self.out_dim, axes=(CONV_OUT, EMBED), dtype=self.dtype, param_dtype=self.param_dtype,
                           name="proj")(tokens)
        tokens = jnp.where(m[..., None], tokens, 0)
        return Encoded(pooled=masked_mean(tokens, m), tokens=tokens, mask=m)
