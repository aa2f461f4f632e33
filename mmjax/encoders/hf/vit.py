"""ViT (``model_type`` "vit") image encoder.

``tokens`` = the reference ``ViTModel`` ``last_hidden_state`` (B, 1 + N, D)
([CLS] then the patches, after the final LayerNorm); ``pooled`` = its
``pooler_output`` tanh(W h_[CLS] + b) with ``pooling="pooler"`` (the default
when the checkpoint has pooler weights), or h_[CLS] itself with
``pooling="cls"``; ``pooler=False`` for checkpoints without a pooler
(e.g. ``ViTForImageClassification``), which then pool with "cls".
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.encoders.hf.layers import EncoderLayer, check_image, convert_layer, layer_norm, patch_embed
from mmjax.encoders.hf.weights import HFCheckpointError, StateDict, find_prefix
from mmjax.layers import dense
from mmjax.sharding import EMBED, LENGTH, logical
from mmjax.types import Encoded

Array = jax.Array
MODEL_TYPES = ("vit",)


class ViTEncoder(nn.Module):
    """pixel_values (B, H, W, C) float -> Encoded(pooled (B, D), tokens (B, 1 + N, D), mask all True)."""

    hidden_size: int
    num_layers: int
    num_heads: int
    mlp_dim: int
    image_size: int
    patch_size: int
    num_channels: int = 3
    layer_norm_eps: float = 1e-12
    act: str = "gelu"
    pooling: str = "pooler"
    pooler: bool = True
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, mask: Optional[Array] = None, *, train: bool = False) -> Encoded:
        """x: (B, image_size, image_size, num_channels) normalised pixels; ``mask`` is ignored."""
        del mask
        check_image(x, self.image_size, self.num_channels, "vit")
        d = self.hidden_size
        x = patch_embed(x, d, self.patch_size, True, self.dtype, self.param_dtype, "patch_embedding")
        cls = self.param("cls_token", logical(nn.initializers.zeros_init(), (None, None, EMBED)), (1, 1, d),
                         self.param_dtype)
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (x.shape[0], 1, d)), x], axis=1)
        pos = self.param("position_embedding", logical(nn.initializers.normal(0.02), (None, LENGTH, EMBED)),
                         (1, x.shape[1], d), self.param_dtype)
        x = nn.Dropout(self.dropout_rate)(x + pos.astype(x.dtype), deterministic=not train)
        for i in range(self.num_layers):
            x = EncoderLayer(self.num_heads, self.mlp_dim, self.act, pre_norm=True,
                             layer_norm_eps=self.layer_norm_eps, dropout_rate=self.dropout_rate, dtype=self.dtype,
                             param_dtype=self.param_dtype, name=f"layer_{i}")(x, train=train)
        x = layer_norm(self.layer_norm_eps, self.dtype, self.param_dtype, "ln_final")(x)
        if self.pooling not in ("pooler", "cls") or (self.pooling == "pooler" and not self.pooler):
            raise HFCheckpointError(f"vit: pooling must be 'pooler' (needs pooler=True) or 'cls', "
                                    f"got {self.pooling!r}")
        pooled = x[:, 0]
        if self.pooler:  # ViTModel's pooler: its params exist whichever pooling is read
            # (embed, None): a mesh axis may appear once per weight, so the output side is replicated
            pooler = jnp.tanh(dense(d, axes=(EMBED, None), dtype=self.dtype, param_dtype=self.param_dtype,
                                    name="pooler")(x[:, 0]))
            pooled = pooler if self.pooling == "pooler" else pooled
        return Encoded(pooled=pooled, tokens=x, mask=jnp.ones(x.shape[:2], bool))


def module_kwargs(cfg: Mapping[str, Any]) -> Dict[str, Any]:
    """``ViTEncoder`` attributes from a ViT config.json."""
    if not cfg.get("qkv_bias", True):
        raise HFCheckpointError("vit: qkv_bias=False is not supported")
    return dict(hidden_size=cfg["hidden_size"], num_layers=cfg["num_hidden_layers"],
                num_heads=cfg["num_attention_heads"], mlp_dim=cfg["intermediate_size"],
                image_size=cfg["image_size"], patch_size=cfg["patch_size"],
                num_channels=cfg.get("num_channels", 3), layer_norm_eps=cfg.get("layer_norm_eps", 1e-12),
                act=cfg.get("hidden_act", "gelu"))


def has_pooler(state: Mapping[str, Any]) -> bool:
    return any(k.endswith("pooler.dense.weight") for k in state)


def convert(state: Mapping[str, Any], cfg: Mapping[str, Any], pooler: bool = True) -> Dict[str, Any]:
    """ViTModel state dict (bare or under ``vit.``) -> ``ViTEncoder`` params."""
    sd = StateDict(state, find_prefix(state, ("", "vit."), "embeddings.cls_token"), "vit")
    heads = cfg["num_attention_heads"]
    params: Dict[str, Any] = {
        "patch_embedding": sd.conv("embeddings.patch_embeddings.projection"),
        "cls_token": sd.get("embeddings.cls_token"),
        "position_embedding": sd.get("embeddings.position_embeddings"),
        "ln_final": sd.layer_norm("layernorm"),
    }
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        params[f"layer_{i}"] = convert_layer(sd, heads, {
            "q": p + "attention.attention.query", "k": p + "attention.attention.key",
            "v": p + "attention.attention.value", "o": p + "attention.output.dense",
            "ln_1": p + "layernorm_before", "ln_2": p + "layernorm_after",
            "fc1": p + "intermediate.dense", "fc2": p + "output.dense"})
    if pooler:
        params["pooler"] = sd.linear("pooler.dense")
    return params
