"""Audio encoders: ``audio_cnn`` (2D conv net over log-mel) and ``ast`` (Audio Spectrogram Transformer).

Inputs are either
  * (B, N) float waveforms with an optional (B, N) bool sample mask (right
    padding), turned into a log-mel spectrogram by :mod:`audio_frontend`; or
  * (B, frames, n_mels) precomputed log-mel spectrograms in dB with an optional
    (B, frames) frame mask.
The dB values are standardised with the fixed ``spec_mean`` / ``spec_std``
(not batch statistics, so padding cannot move them) and padded frames are set
to 0. Token masks mark tokens built only from padded frames as padding, so
appending padding to a waveform does not change the pooled output (exactly,
with the default ``pad_mode="constant"``).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.encoders import audio_frontend
from mmjax.encoders.common import (
    block_max_pool,
    EncoderInputError,
    flatten_pool,
    channel_norm,
    check_mask,
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


class _Spectrogram(nn.Module):
    """Waveform or precomputed log-mel -> (standardised (B, T, M), frame mask (B, T))."""

    encoder: str
    sample_rate: int
    n_fft: int
    hop_length: int
    n_mels: int
    fmin: float
    fmax: Optional[float]
    pad_mode: str
    top_db: Optional[float]
    spec_mean: float
    spec_std: float

    def __call__(self, x: Array, mask: Optional[Array]) -> Tuple[Array, Array]:
        if x.ndim == 2:
            mask = check_mask(self.encoder, mask, x.shape, "(B, N) bool over samples")
            if mask is None:
                mask = jnp.ones(x.shape, bool)
            spec = audio_frontend.log_melspectrogram(
                x, mask=mask, sr=self.sample_rate, n_fft=self.n_fft, hop_length=self.hop_length,
                n_mels=self.n_mels, fmin=self.fmin, fmax=self.fmax, pad_mode=self.pad_mode, top_db=self.top_db,
            )
            frames = audio_frontend.frame_mask(mask, self.n_fft, self.hop_length)
        elif x.ndim == 3:
            if x.shape[-1] != self.n_mels:
                raise EncoderInputError(
                    f"{self.encoder} encoder: spectrogram has {x.shape[-1]} mel bins, config n_mels={self.n_mels}"
                )
            frames = check_mask(self.encoder, mask, x.shape[:2], "(B, frames) bool over spectrogram frames")
            if frames is None:
                frames = jnp.ones(x.shape[:2], bool)
            spec = x.astype(jnp.float32)
        else:
            raise EncoderInputError(
                f"{self.encoder} encoder: expected a (B, N) waveform or a (B, frames, n_mels) log-mel "
                f"spectrogram, got shape {tuple(x.shape)}"
            )
        spec = (spec - self.spec_mean) / self.spec_std
        return jnp.where(frames[..., None], spec, 0.0), frames


class _AudioBase(nn.Module):
    sample_rate: int = 16000
    n_fft: int = 400
    hop_length: int = 160
    n_mels: int = 64
    fmin: float = 0.0
    fmax: Optional[float] = None
    pad_mode: str = "constant"
    top_db: Optional[float] = 80.0
    spec_mean: float = -30.0
    spec_std: float = 25.0

    def spectrogram(self, name: str, x: Array, mask: Optional[Array]) -> Tuple[Array, Array]:
        return _Spectrogram(name, self.sample_rate, self.n_fft, self.hop_length, self.n_mels, self.fmin,
                            self.fmax, self.pad_mode, self.top_db, self.spec_mean, self.spec_std,
                            name="frontend")(x, mask)


_FRONTEND_DOC = """
    Frontend attributes (waveform inputs): sample_rate, n_fft, hop_length,
    n_mels, fmin, fmax, pad_mode, top_db, as in librosa; spec_mean / spec_std
    standardise the dB values (defaults suit waveforms in [-1, 1]).
"""


@register("audio_cnn")
class AudioCnnEncoder(_AudioBase):
    """Log-mel -> 2D conv net over (time, mel): -> Encoded with one token per pooled time step.

    Per stage: ``convs_per_stage`` x [3x3 conv -> LayerNorm(channels) -> ReLU],
    then 2x2 max-pool. Padded frames are zeroed before every conv (so they act
    like the conv's own zero padding); post-ReLU values are >= 0, so a zero fill
    also leaves max-pooling unchanged. Tokens: mean over the mel axis of the
    final map, (B, ceil(frames / 2^S), C) (projected to ``out_dim`` if set);
    pooled = masked mean over time (``pool="mean"``), or a Dense layer over the
    flattened final (time, mel, channel) map (``pool="flatten"``: keeps the
    time order, which a mean discards; fixes the clip length at init, padded
    frames are zeros; needs ``out_dim``).
    """

    features: Sequence[int] = (32, 64, 128)
    convs_per_stage: int = 1
    out_dim: Optional[int] = None
    pool: str = "mean"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, mask: Optional[Array] = None, *, train: bool = False) -> Encoded:
        spec, frames = self.spectrogram("audio_cnn", x, mask)
        h = spec[..., None].astype(self.dtype)  # (B, T, M, 1)
        m = frames
        for s, width in enumerate(self.features):
            for j in range(self.convs_per_stage):
                h = jnp.where(m[:, :, None, None], h, 0)
                h = conv(width, (3, 3), dtype=self.dtype, param_dtype=self.param_dtype, name=f"conv_{s}_{j}")(h)
                h = nn.relu(channel_norm(self.dtype, self.param_dtype, name=f"norm_{s}_{j}")(h))
            h = jnp.where(m[:, :, None, None], h, 0)
            h = block_max_pool(h, (2, 2))
            m = downsample_mask(m, 2, h.shape[1])
        tokens = h.mean(2)
        if self.out_dim is not None:
            tokens = dense(self.out_dim, axes=(CONV_OUT, EMBED), dtype=self.dtype, param_dtype=self.param_dtype,
                           name="proj")(tokens)
        tokens = jnp.where(m[..., None], tokens, 0)
        if self.pool == "mean":
            return Encoded(pooled=masked_mean(tokens, m), tokens=tokens, mask=m)
        pooled = flatten_pool("audio_cnn", self, h.reshape(h.shape[0], -1))
        return Encoded(pooled=pooled, tokens=tokens, mask=m)


@register("ast")
class AstEncoder(_AudioBase):
    """Audio Spectrogram Transformer (Gong et al. 2021): log-mel -> patches -> TransformerStack.

    Non-overlapping (patch_time x patch_freq) patches of the (frames, n_mels)
    spectrogram are linearly embedded; frames are zero-padded to a multiple of
    ``patch_time``. Position = learned time embedding (first T' rows of a
    ``max_time_patches`` table) + learned frequency embedding. A patch is
    padding when all its frames are. Tokens (B, T' * n_mels / patch_freq, D)
    in time-major order; pooled = class token (``pool="cls"``) or masked mean.
    """

    patch_time: int = 16
    patch_freq: int = 16
    hidden_dim: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    max_time_patches: int = 256
    dropout_rate: float = 0.0
    pool: str = "cls"
    scan: bool = False
    remat: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, mask: Optional[Array] = None, *, train: bool = False) -> Encoded:
        if self.pool not in ("cls", "mean"):
            raise EncoderInputError(f"ast encoder: pool must be 'cls' or 'mean', got {self.pool!r}")
        if self.n_mels % self.patch_freq:
            raise EncoderInputError(f"ast encoder: n_mels={self.n_mels} is not a multiple of patch_freq={self.patch_freq}")
        spec, frames = self.spectrogram("ast", x, mask)
        pt, pf = self.patch_time, self.patch_freq
        t_patches = -(-spec.shape[1] // pt)
        spec = jnp.pad(spec, ((0, 0), (0, t_patches * pt - spec.shape[1]), (0, 0)))
        h = conv(self.hidden_dim, (pt, pf), strides=(pt, pf), padding="VALID", dtype=self.dtype,
                 param_dtype=self.param_dtype, name="patch_embed")(spec[..., None].astype(self.dtype))
        b, nt, nf, d = h.shape
        pos_t = sliced_positions(self, "time_embedding", nt, self.max_time_patches, d, self.param_dtype,
                                 "time patches", "ast", "max_time_patches")
        pos_f = embedding_param(self, "freq_embedding", (nf, d), (LENGTH, EMBED), self.param_dtype)
        h = h + (pos_t[:, None, :] + pos_f[None, :, :]).astype(self.dtype)
        h = einops.rearrange(h, "b t f d -> b (t f) d")
        tmask = einops.repeat(downsample_mask(frames, pt, nt), "b t -> b (t f)", f=nf)
        attn_mask = tmask
        if self.pool == "cls":
            cls = cls_token(self, d, self.param_dtype).astype(self.dtype)
            h = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, d)), h], axis=1)
            attn_mask = jnp.concatenate([jnp.ones((b, 1), bool), tmask], axis=1)
        h = nn.Dropout(self.dropout_rate)(h, deterministic=not train)
        h = TransformerStack(
            num_layers=self.num_layers, num_heads=self.num_heads, mlp_dim=self.mlp_dim,
            dropout_rate=self.dropout_rate, scan=self.scan, remat=self.remat,
            dtype=self.dtype, param_dtype=self.param_dtype, name="transformer",
        )(h, attn_mask, train=train)
        if self.pool == "cls":
            pooled, h = h[:, 0], h[:, 1:]
        tokens = jnp.where(tmask[..., None], h, 0)
        if self.pool == "mean":
            pooled = masked_mean(tokens, tmask)
        return Encoded(pooled=pooled, tokens=tokens, mask=tmask)


for _cls in (AudioCnnEncoder, AstEncoder):
    _cls.__doc__ = (_cls.__doc__ or "") + _FRONTEND_DOC
