"""AST, the Audio Spectrogram Transformer (``model_type`` "audio-spectrogram-transformer").

Input: ``input_values`` (B, max_length, num_mel_bins) Kaldi-style log-mel
filterbanks, time first, exactly what ``transformers.ASTModel`` takes (the
``ASTFeatureExtractor`` output, normalised with the checkpoint's mean / std).
Patches of ``patch_size`` x ``patch_size`` over (frequency, time) with strides
``frequency_stride`` / ``time_stride`` (they overlap in the released
checkpoints), ordered frequency-major as torch flattens them.

``tokens`` = ``ASTModel`` ``last_hidden_state`` (B, 2 + N, D): [CLS], the
distillation token, then the patches, after the final LayerNorm; ``pooled`` =
its ``pooler_output`` (B, D), the mean of the [CLS] and distillation states
(what ``ASTForAudioClassification`` classifies). ``mask`` is all True.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.encoders.hf.layers import EncoderLayer, convert_layer, layer_norm, patch_embed, vit_layer_names
from mmjax.encoders.hf.weights import HFCheckpointError, StateDict, find_prefix
from mmjax.sharding import EMBED, LENGTH, logical
from mmjax.types import Encoded

Array = jax.Array
MODEL_TYPES = ("audio-spectrogram-transformer",)


class ASTEncoder(nn.Module):
    """input_values (B, max_length, num_mel_bins) -> Encoded(pooled (B, D), tokens (B, 2 + N, D), mask all True)."""

    hidden_size: int
    num_layers: int
    num_heads: int
    mlp_dim: int
    num_mel_bins: int
    max_length: int
    patch_size: int
    frequency_stride: int
    time_stride: int
    layer_norm_eps: float = 1e-12
    act: str = "gelu"
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, mask: Optional[Array] = None, *, train: bool = False) -> Encoded:
        """x: (B, max_length, num_mel_bins) filterbank frames; ``mask`` is ignored (the reference takes none)."""
        del mask
        if x.ndim != 3 or tuple(x.shape[1:]) != (self.max_length, self.num_mel_bins):
            raise HFCheckpointError(f"ast: input_values must be (B, {self.max_length}, {self.num_mel_bins}) "
                                    f"(time, mel bins), got {tuple(x.shape)}")
        d = self.hidden_size
        # torch convolves (B, 1, freq, time): the same image here, channels last.
        spec = jnp.swapaxes(x.astype(self.dtype), 1, 2)[..., None]
        x = patch_embed(spec, d, self.patch_size, True, self.dtype, self.param_dtype, "patch_embedding",
                        strides=(self.frequency_stride, self.time_stride))
        special = self.param("special_tokens", logical(nn.initializers.zeros_init(), (None, None, EMBED)),
                             (1, 2, d), self.param_dtype)  # [CLS], distillation
        x = jnp.concatenate([jnp.broadcast_to(special.astype(x.dtype), (x.shape[0], 2, d)), x], axis=1)
        pos = self.param("position_embedding", logical(nn.initializers.normal(0.02), (None, LENGTH, EMBED)),
                         (1, x.shape[1], d), self.param_dtype)
        x = nn.Dropout(self.dropout_rate)(x + pos.astype(x.dtype), deterministic=not train)
        for i in range(self.num_layers):
            x = EncoderLayer(self.num_heads, self.mlp_dim, self.act, pre_norm=True,
                             layer_norm_eps=self.layer_norm_eps, dropout_rate=self.dropout_rate, dtype=self.dtype,
                             param_dtype=self.param_dtype, name=f"layer_{i}")(x, train=train)
        x = layer_norm(self.layer_norm_eps, self.dtype, self.param_dtype, "ln_final")(x)
        return Encoded(pooled=(x[:, 0] + x[:, 1]) / 2, tokens=x, mask=jnp.ones(x.shape[:2], bool))


def module_kwargs(cfg: Mapping[str, Any]) -> Dict[str, Any]:
    """``ASTEncoder`` attributes from an AST config.json."""
    if not cfg.get("qkv_bias", True):
        raise HFCheckpointError("ast: qkv_bias=False is not supported")
    return dict(hidden_size=cfg["hidden_size"], num_layers=cfg["num_hidden_layers"],
                num_heads=cfg["num_attention_heads"], mlp_dim=cfg["intermediate_size"],
                num_mel_bins=cfg.get("num_mel_bins", 128), max_length=cfg.get("max_length", 1024),
                patch_size=cfg.get("patch_size", 16), frequency_stride=cfg.get("frequency_stride", 10),
                time_stride=cfg.get("time_stride", 10), layer_norm_eps=cfg.get("layer_norm_eps", 1e-12),
                act=cfg.get("hidden_act", "gelu"))


def convert(state: Mapping[str, Any], cfg: Mapping[str, Any]) -> Dict[str, Any]:
    """ASTModel state dict (bare or under ``audio_spectrogram_transformer.``) -> ``ASTEncoder`` params."""
    sd = StateDict(state, find_prefix(state, ("", "audio_spectrogram_transformer."), "embeddings.cls_token"),
                   "ast")
    params: Dict[str, Any] = {
        "patch_embedding": sd.conv("embeddings.patch_embeddings.projection"),
        "special_tokens": np.concatenate([sd.get("embeddings.cls_token"),
                                           sd.get("embeddings.distillation_token")], axis=1),
        "position_embedding": sd.get("embeddings.position_embeddings"),
        "ln_final": sd.layer_norm("layernorm"),
    }
    for i in range(cfg["num_hidden_layers"]):
        params[f"layer_{i}"] = convert_layer(sd, cfg["num_attention_heads"], vit_layer_names(f"encoder.layer.{i}."))
    return params
