"""VideoMAE (``model_type`` "videomae") video encoder.

Input: clips (B, F, H, W, C) channels last, the mmjax video convention
(``transformers.VideoMAEModel`` takes (B, F, C, H, W)), with F = ``num_frames``
and H = W = ``image_size``: the fixed sinusoidal position table covers exactly
(F / tubelet) x (H / patch) x (W / patch) tubelets, ordered (time, row, column).

``tokens`` = ``VideoMAEModel`` ``last_hidden_state`` (B, N, D) (no [CLS]; with
``use_mean_pooling``, the default, the model applies no final LayerNorm);
``pooled`` = what ``VideoMAEForVideoClassification`` feeds its classifier:
``fc_norm(mean of tokens)`` when the checkpoint has ``fc_norm`` (a classification
checkpoint; option ``pooler``, default: whether the tensors are there), else the
plain mean of tokens (B, D). (The reference classifier reads token 0 when
``use_mean_pooling`` is off; a model without [CLS] pools by the mean here.)
``mask`` is all True (the reference takes no frame mask).
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.encoders.hf.layers import EncoderLayer, convert_layer, layer_norm, patch_embed, vit_layer_names
from mmjax.encoders.hf.weights import HFCheckpointError, StateDict, find_prefix
from mmjax.types import Encoded

Array = jax.Array
MODEL_TYPES = ("videomae",)
FC_NORM_EPS = 1e-5  # VideoMAEForVideoClassification's fc_norm is a default torch LayerNorm


def sinusoid_table(n: int, d: int) -> np.ndarray:
    """VideoMAE's fixed position table (n, d): sin on even, cos on odd channels, 10000^(2 (j // 2) / d)."""
    angle = np.arange(n)[:, None] / np.power(10000.0, 2 * (np.arange(d) // 2) / d)[None, :]
    angle[:, 0::2], angle[:, 1::2] = np.sin(angle[:, 0::2]), np.cos(angle[:, 1::2])
    return angle.astype(np.float32)


class VideoMAEEncoder(nn.Module):
    """clips (B, F, H, W, C) -> Encoded(pooled (B, D), tokens (B, N, D), mask all True)."""

    hidden_size: int
    num_layers: int
    num_heads: int
    mlp_dim: int
    image_size: int
    patch_size: int
    num_frames: int
    tubelet_size: int
    num_channels: int = 3
    layer_norm_eps: float = 1e-12
    act: str = "gelu"
    use_mean_pooling: bool = True
    pooler: bool = False  # fc_norm on the mean (classification checkpoints)
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, mask: Optional[Array] = None, *, train: bool = False) -> Encoded:
        """x: (B, num_frames, image_size, image_size, num_channels) normalised pixels; ``mask`` is ignored."""
        del mask
        want = (self.num_frames, self.image_size, self.image_size, self.num_channels)
        if x.ndim != 5 or tuple(x.shape[1:]) != want:
            raise HFCheckpointError(f"videomae: clips must be (B, {', '.join(map(str, want))}) = (B, F, H, W, C) "
                                    f"channels last, got {tuple(x.shape)}")
        d = self.hidden_size
        kernel = (self.tubelet_size, self.patch_size, self.patch_size)
        x = patch_embed(x.astype(self.dtype), d, kernel, True, self.dtype, self.param_dtype, "patch_embedding")
        x = x + jnp.asarray(sinusoid_table(x.shape[1], d), x.dtype)  # a constant, not a param (as in torch)
        x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
        for i in range(self.num_layers):
            x = EncoderLayer(self.num_heads, self.mlp_dim, self.act, pre_norm=True,
                             layer_norm_eps=self.layer_norm_eps, dropout_rate=self.dropout_rate, dtype=self.dtype,
                             param_dtype=self.param_dtype, name=f"layer_{i}")(x, train=train)
        if not self.use_mean_pooling:
            x = layer_norm(self.layer_norm_eps, self.dtype, self.param_dtype, "ln_final")(x)
        pooled = x.astype(jnp.float32).mean(axis=1).astype(x.dtype)
        if self.pooler:
            pooled = layer_norm(FC_NORM_EPS, self.dtype, self.param_dtype, "fc_norm")(pooled)
        return Encoded(pooled=pooled, tokens=x, mask=jnp.ones(x.shape[:2], bool))


def module_kwargs(cfg: Mapping[str, Any]) -> Dict[str, Any]:
    """``VideoMAEEncoder`` attributes from a VideoMAE config.json; ``pooler`` (fc_norm) defaults to whether
    the config's ``architectures`` name a classification model that has one."""
    mean = bool(cfg.get("use_mean_pooling", True))
    return dict(hidden_size=cfg["hidden_size"], num_layers=cfg["num_hidden_layers"],
                num_heads=cfg["num_attention_heads"], mlp_dim=cfg["intermediate_size"],
                image_size=cfg["image_size"], patch_size=cfg["patch_size"], num_frames=cfg["num_frames"],
                tubelet_size=cfg["tubelet_size"], num_channels=cfg.get("num_channels", 3),
                layer_norm_eps=cfg.get("layer_norm_eps", 1e-12), act=cfg.get("hidden_act", "gelu"),
                use_mean_pooling=mean,
                pooler=mean and "VideoMAEForVideoClassification" in (cfg.get("architectures") or ()))


def has_pooler(state: Mapping[str, Any]) -> bool:
    return "fc_norm.weight" in state


def convert(state: Mapping[str, Any], cfg: Mapping[str, Any], pooler: bool = False) -> Dict[str, Any]:
    """VideoMAEModel state dict (bare or under ``videomae.``, e.g. VideoMAEForVideoClassification)
    -> ``VideoMAEEncoder`` params; ``pooler`` adds the classification checkpoint's top-level fc_norm."""
    # VideoMAE stores the query / value biases as q_bias / v_bias (the key has none: StateDict.heads zeros it).
    state = {**state, **{k[:-len("q_bias")] + "query.bias": v for k, v in state.items() if k.endswith(".q_bias")},
             **{k[:-len("v_bias")] + "value.bias": v for k, v in state.items() if k.endswith(".v_bias")}}
    sd = StateDict(state, find_prefix(state, ("", "videomae."), "embeddings.patch_embeddings.projection.weight"),
                   "videomae")
    params: Dict[str, Any] = {"patch_embedding": sd.conv("embeddings.patch_embeddings.projection")}
    for i in range(cfg["num_hidden_layers"]):
        params[f"layer_{i}"] = convert_layer(sd, cfg["num_attention_heads"], vit_layer_names(f"encoder.layer.{i}."))
    if not cfg.get("use_mean_pooling", True):
        params["ln_final"] = sd.layer_norm("layernorm")
    if pooler:
        if not has_pooler(state):
            raise HFCheckpointError("videomae: the checkpoint has no fc_norm (not a classification model); "
                                    "use pooler=False")
        params["fc_norm"] = StateDict(state, "", "videomae").layer_norm("fc_norm")
    return params
