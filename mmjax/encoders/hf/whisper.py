"""Whisper's audio encoder (``model_type`` "whisper"; the decoder is not converted).

Input: ``input_features`` log-mel (B, frames, n_mels), time first like every
mmjax audio input: the transpose of what ``transformers.WhisperModel.encoder``
takes, (B, n_mels, frames). ``frames`` must be ``2 * max_source_positions``
(3000 for the released checkpoints, 30 s padded), as the reference requires.

``tokens`` = the encoder's ``last_hidden_state`` (B, max_source_positions, D)
(after its final LayerNorm); ``pooled`` = the mean of ``tokens`` over time
(B, D): Whisper has no pooler (``WhisperForAudioClassification`` also averages
over time, after its linear projector). ``mask`` is all True: the reference
attends to every frame, silence padding included.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.encoders.hf.layers import EncoderLayer, convert_layer, layer_norm
from mmjax.encoders.hf.weights import HFCheckpointError, StateDict, find_prefix
from mmjax.sharding import EMBED, LENGTH, logical
from mmjax.types import Encoded

Array = jax.Array
MODEL_TYPES = ("whisper",)
LAYER_NORM_EPS = 1e-5  # torch's default: Whisper's LayerNorms take no eps from the config


class WhisperEncoder(nn.Module):
    """input_features (B, 2 * max_source_positions, n_mels) -> Encoded(pooled (B, D),
    tokens (B, max_source_positions, D), mask all True)."""

    hidden_size: int
    num_layers: int
    num_heads: int
    mlp_dim: int
    num_mel_bins: int
    max_source_positions: int
    act: str = "gelu"
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, mask: Optional[Array] = None, *, train: bool = False) -> Encoded:
        """x: (B, frames, n_mels) log-mel, time first; ``mask`` is ignored (the reference takes none)."""
        del mask
        frames = 2 * self.max_source_positions
        if x.ndim != 3 or tuple(x.shape[1:]) != (frames, self.num_mel_bins):
            raise HFCheckpointError(f"whisper: input_features must be (B, {frames}, {self.num_mel_bins}) "
                                    f"(time first, padded to 2 * max_source_positions), got {tuple(x.shape)}")
        d = self.hidden_size

        def conv(stride: int, name: str) -> nn.Conv:
            return nn.Conv(d, (3,), strides=(stride,), padding=[(1, 1)], dtype=self.dtype,
                           param_dtype=self.param_dtype,
                           kernel_init=logical(nn.initializers.lecun_normal(), (None, None, EMBED)),
                           bias_init=logical(nn.initializers.zeros_init(), (EMBED,)), name=name)

        gelu = lambda h: nn.gelu(h, approximate=False)  # noqa: E731  (the convs' torch gelu, whatever the config)
        x = gelu(conv(2, "conv2")(gelu(conv(1, "conv1")(x.astype(self.dtype)))))
        pos = self.param("position_embedding", logical(nn.initializers.normal(0.02), (LENGTH, EMBED)),
                         (self.max_source_positions, d), self.param_dtype)
        x = nn.Dropout(self.dropout_rate)(x + pos.astype(x.dtype), deterministic=not train)
        for i in range(self.num_layers):
            x = EncoderLayer(self.num_heads, self.mlp_dim, self.act, pre_norm=True, layer_norm_eps=LAYER_NORM_EPS,
                             dropout_rate=self.dropout_rate, dtype=self.dtype, param_dtype=self.param_dtype,
                             name=f"layer_{i}")(x, train=train)
        x = layer_norm(LAYER_NORM_EPS, self.dtype, self.param_dtype, "ln_final")(x)
        pooled = x.astype(jnp.float32).mean(axis=1).astype(x.dtype)
        return Encoded(pooled=pooled, tokens=x, mask=jnp.ones(x.shape[:2], bool))


def module_kwargs(cfg: Mapping[str, Any]) -> Dict[str, Any]:
    """``WhisperEncoder`` attributes from a Whisper config.json (its ``encoder_*`` fields)."""
    return dict(hidden_size=cfg["d_model"], num_layers=cfg["encoder_layers"],
                num_heads=cfg["encoder_attention_heads"], mlp_dim=cfg["encoder_ffn_dim"],
                num_mel_bins=cfg.get("num_mel_bins", 80), max_source_positions=cfg.get("max_source_positions", 1500),
                act=cfg.get("activation_function", "gelu"))


def convert(state: Mapping[str, Any], cfg: Mapping[str, Any]) -> Dict[str, Any]:
    """The encoder of a WhisperModel / WhisperForConditionalGeneration / WhisperForAudioClassification
    state dict (under ``encoder.`` or ``model.encoder.``) -> ``WhisperEncoder`` params."""
    sd = StateDict(state, find_prefix(state, ("encoder.", "model.encoder.", ""), "conv1.weight"), "whisper")
    heads = cfg["encoder_attention_heads"]
    params: Dict[str, Any] = {
        "conv1": sd.conv("conv1"),
        "conv2": sd.conv("conv2"),
        "position_embedding": sd.get("embed_positions.weight"),
        "ln_final": sd.layer_norm("layer_norm"),
    }
    for i in range(cfg["encoder_layers"]):
        p = f"layers.{i}."
        # k_proj has no bias in Whisper: StateDict.heads gives zeros for it.
        params[f"layer_{i}"] = convert_layer(sd, heads, {
            "q": p + "self_attn.q_proj", "k": p + "self_attn.k_proj", "v": p + "self_attn.v_proj",
            "o": p + "self_attn.out_proj", "ln_1": p + "self_attn_layer_norm", "ln_2": p + "final_layer_norm",
            "fc1": p + "fc1", "fc2": p + "fc2"})
    return params
