"""CLIP (``model_type`` "clip", "clip_vision_model", "clip_text_model"): the vision and text towers.

Vision: ``tokens`` = the reference ``CLIPVisionModel`` ``last_hidden_state``
(B, 1 + N, D) (no final norm: CLIP applies ``post_layernorm`` to [CLS] only);
``pooled`` = ``image_embeds`` = ``visual_projection(post_layernorm(h_[CLS]))``
(B, P), what ``CLIPModel.get_image_features`` returns (``CLIPModel.forward``
L2-normalises it; set ``normalize=True`` for that).

Text: ``tokens`` = ``CLIPTextModel`` ``last_hidden_state`` (B, L, D) (causal
attention, final LayerNorm); ``pooled`` = ``text_embeds`` =
``text_projection(h_[EOS])`` (B, P), the state at the first ``eos_token_id``
(the largest id for legacy configs whose eos_token_id is 2).

The towers are written once for CLIP and SigLIP (``variant``); SigLIP's
differences are listed in :mod:`mmjax.encoders.hf.siglip`.
"""
from __future__ import annotations

import functools
from typing import Any, Dict, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.encoders.hf.layers import (EncoderLayer, activation, check_image, convert_layer, layer_norm,
                                     patch_embed)
from mmjax.encoders.hf.weights import HFCheckpointError, StateDict, find_prefix
from mmjax.layers import MultiHeadAttention, dense
from mmjax.sharding import EMBED, LENGTH, MLP, VOCAB, logical
from mmjax.types import Encoded

Array = jax.Array
MODEL_TYPES = ("clip", "clip_vision_model", "clip_text_model")


def _normalize(x: Array) -> Array:
    return x / jnp.maximum(jnp.linalg.norm(x.astype(jnp.float32), axis=-1, keepdims=True), 1e-12).astype(x.dtype)


class MAPHead(nn.Module):
    """SigLIP's attention-pooling head: tokens (B, T, D) -> (B, D) (one learned probe query)."""

    num_heads: int
    mlp_dim: int
    act: str
    layer_norm_eps: float
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        d = x.shape[-1]
        probe = self.param("probe", logical(nn.initializers.normal(0.02), (None, None, EMBED)), (1, 1, d),
                           self.param_dtype)
        q = jnp.broadcast_to(probe.astype(x.dtype), (x.shape[0], 1, d))
        h = MultiHeadAttention(num_heads=self.num_heads, dtype=self.dtype, param_dtype=self.param_dtype,
                               name="attention")(q, x)
        y = layer_norm(self.layer_norm_eps, self.dtype, self.param_dtype, "ln")(h)
        y = dense(self.mlp_dim, axes=(EMBED, MLP), dtype=self.dtype, param_dtype=self.param_dtype, name="fc1")(y)
        y = dense(d, axes=(MLP, EMBED), dtype=self.dtype, param_dtype=self.param_dtype, name="fc2")(
            activation(self.act)(y))
        return (h + y)[:, 0]


class VisionTower(nn.Module):
    """pixel_values (B, H, W, C) -> Encoded(pooled (B, P), tokens (B, T, D), mask all True).

    ``variant="clip"``: [CLS] token, pre-LayerNorm, pooled = projection of the
    post-normed [CLS]. ``variant="siglip"``: no [CLS], post-LayerNorm on every
    token, pooled = the attention-pooling head (``use_head``).
    """

    hidden_size: int
    num_layers: int
    num_heads: int
    mlp_dim: int
    image_size: int
    patch_size: int
    projection_dim: int = 0
    num_channels: int = 3
    layer_norm_eps: float = 1e-5
    act: str = "quick_gelu"
    variant: str = "clip"
    normalize: bool = False
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, mask: Optional[Array] = None, *, train: bool = False) -> Encoded:
        """x: (B, image_size, image_size, num_channels) normalised pixels; ``mask`` is ignored."""
        del mask
        clip = self.variant == "clip"
        check_image(x, self.image_size, self.num_channels, self.variant)
        d = self.hidden_size
        ln = functools.partial(layer_norm, self.layer_norm_eps, self.dtype, self.param_dtype)
        x = patch_embed(x, d, self.patch_size, not clip, self.dtype, self.param_dtype, "patch_embedding")
        if clip:
            cls = self.param("class_embedding", logical(nn.initializers.normal(0.02), (EMBED,)), (d,),
                             self.param_dtype)
            x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (x.shape[0], 1, d)), x], axis=1)
        x = x + nn.Embed(x.shape[1], d, dtype=self.dtype, param_dtype=self.param_dtype,
                         embedding_init=logical(nn.initializers.normal(0.02), (LENGTH, EMBED)),
                         name="position_embedding")(jnp.arange(x.shape[1])[None])
        if clip:
            x = ln("ln_pre")(x)
        for i in range(self.num_layers):
            x = EncoderLayer(self.num_heads, self.mlp_dim, self.act, pre_norm=True,
                             layer_norm_eps=self.layer_norm_eps, dropout_rate=self.dropout_rate, dtype=self.dtype,
                             param_dtype=self.param_dtype, name=f"layer_{i}")(x, train=train)
        if clip:
            pooled = dense(self.projection_dim, axes=(EMBED, None), use_bias=False, dtype=self.dtype,
                           param_dtype=self.param_dtype, name="projection")(ln("ln_post")(x[:, 0]))
        else:
            x = ln("ln_post")(x)
            pooled = MAPHead(self.num_heads, self.mlp_dim, self.act, self.layer_norm_eps, self.dtype,
                             self.param_dtype, name="head")(x)
        pooled = _normalize(pooled) if self.normalize else pooled
        return Encoded(pooled=pooled, tokens=x, mask=jnp.ones(x.shape[:2], bool))


class TextTower(nn.Module):
    """input_ids (B, L) int, attention mask (B, L) bool -> Encoded(pooled (B, P), tokens (B, L, D), mask).

    ``variant="clip"``: causal attention, pooled = projection (no bias) of the
    first ``eos_token_id`` state. ``variant="siglip"``: bidirectional,
    pooled = head (with bias) of the last position's state.
    """

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    mlp_dim: int
    max_len: int
    projection_dim: int
    eos_token_id: int = 2
    layer_norm_eps: float = 1e-5
    act: str = "quick_gelu"
    variant: str = "clip"
    normalize: bool = False
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, ids: Array, mask: Optional[Array] = None, *, train: bool = False) -> Encoded:
        """ids (B, L) with L <= max_len; mask (B, L) bool (default all True, as the reference)."""
        if ids.ndim != 2 or not jnp.issubdtype(ids.dtype, jnp.integer) or ids.shape[1] > self.max_len:
            raise HFCheckpointError(f"{self.variant}: input_ids must be (B, L <= {self.max_len}) integers, "
                                    f"got {ids.dtype} {tuple(ids.shape)}")
        clip = self.variant == "clip"
        mask = jnp.ones(ids.shape, bool) if mask is None else mask.astype(bool)
        embed = functools.partial(nn.Embed, features=self.hidden_size, dtype=self.dtype,
                                  param_dtype=self.param_dtype)
        init = nn.initializers.normal(0.02)
        x = embed(self.vocab_size, embedding_init=logical(init, (VOCAB, EMBED)), name="token_embedding")(ids)
        x = x + embed(self.max_len, embedding_init=logical(init, (LENGTH, EMBED)),
                      name="position_embedding")(jnp.arange(ids.shape[1])[None])
        for i in range(self.num_layers):
            x = EncoderLayer(self.num_heads, self.mlp_dim, self.act, pre_norm=True,
                             layer_norm_eps=self.layer_norm_eps, dropout_rate=self.dropout_rate, dtype=self.dtype,
                             param_dtype=self.param_dtype, name=f"layer_{i}")(
                x, mask[:, None, :], causal=clip, train=train)
        x = layer_norm(self.layer_norm_eps, self.dtype, self.param_dtype, "ln_final")(x)
        if not clip:
            at = jnp.full(ids.shape[:1], ids.shape[1] - 1)
        elif self.eos_token_id == 2:  # legacy configs: the EOS token has the largest id
            at = jnp.argmax(ids, axis=-1)
        else:
            at = jnp.argmax(ids == self.eos_token_id, axis=-1)
        pooled = dense(self.projection_dim, axes=(EMBED, None), use_bias=not clip, dtype=self.dtype,
                       param_dtype=self.param_dtype, name="projection")(x[jnp.arange(x.shape[0]), at])
        pooled = _normalize(pooled) if self.normalize else pooled
        return Encoded(pooled=pooled, tokens=x, mask=mask)


def sub_config(cfg: Mapping[str, Any], tower: str) -> Dict[str, Any]:
    """The tower's own config: ``cfg[tower + "_config"]`` of a two-tower config, else ``cfg`` itself."""
    sub = dict(cfg.get(f"{tower}_config") or cfg)
    # A two-tower config's projection_dim is the one its projections have (the sub-configs keep a default).
    sub["projection_dim"] = cfg.get("projection_dim", sub.get("projection_dim", 512))
    return sub


def vision_kwargs(cfg: Mapping[str, Any]) -> Dict[str, Any]:
    c = sub_config(cfg, "vision")
    return dict(hidden_size=c["hidden_size"], num_layers=c["num_hidden_layers"],
                num_heads=c["num_attention_heads"], mlp_dim=c["intermediate_size"], image_size=c["image_size"],
                patch_size=c["patch_size"], projection_dim=c["projection_dim"],
                num_channels=c.get("num_channels", 3), layer_norm_eps=c.get("layer_norm_eps", 1e-5),
                act=c.get("hidden_act", "quick_gelu"))


def text_kwargs(cfg: Mapping[str, Any]) -> Dict[str, Any]:
    c = sub_config(cfg, "text")
    return dict(vocab_size=c["vocab_size"], hidden_size=c["hidden_size"], num_layers=c["num_hidden_layers"],
                num_heads=c["num_attention_heads"], mlp_dim=c["intermediate_size"],
                max_len=c["max_position_embeddings"], projection_dim=c["projection_dim"],
                eos_token_id=c.get("eos_token_id", 2), layer_norm_eps=c.get("layer_norm_eps", 1e-5),
                act=c.get("hidden_act", "quick_gelu"))


def encoder_layers(sd: StateDict, num_layers: int, heads: int) -> Dict[str, Any]:
    """CLIP / SigLIP ``encoder.layers.{i}`` -> ``layer_{i}`` params."""
    out = {}
    for i in range(num_layers):
        p = f"encoder.layers.{i}."
        out[f"layer_{i}"] = convert_layer(sd, heads, {
            "q": p + "self_attn.q_proj", "k": p + "self_attn.k_proj", "v": p + "self_attn.v_proj",
            "o": p + "self_attn.out_proj", "ln_1": p + "layer_norm1", "ln_2": p + "layer_norm2",
            "fc1": p + "mlp.fc1", "fc2": p + "mlp.fc2"})
    return out


def convert_vision(state: Mapping[str, Any], cfg: Mapping[str, Any]) -> Dict[str, Any]:
    """CLIPModel / CLIPVisionModelWithProjection state dict -> ``VisionTower(variant="clip")`` params."""
    c = sub_config(cfg, "vision")
    sd = StateDict(state, find_prefix(state, ("vision_model.", ""), "embeddings.class_embedding"), "clip vision")
    if not any(k.startswith("visual_projection.") for k in state):
        raise HFCheckpointError("clip: no visual_projection in the checkpoint (a CLIPVisionModel without "
                                "projection); save CLIPModel or CLIPVisionModelWithProjection")
    return {
        "patch_embedding": sd.conv("embeddings.patch_embedding", bias=False),
        "class_embedding": sd.get("embeddings.class_embedding"),
        "position_embedding": {"embedding": sd.get("embeddings.position_embedding.weight")},
        "ln_pre": sd.layer_norm("pre_layrnorm"),
        **encoder_layers(sd, c["num_hidden_layers"], c["num_attention_heads"]),
        "ln_post": sd.layer_norm("post_layernorm"),
        "projection": StateDict(state, "", "clip").linear("visual_projection", bias=False),
    }


def convert_text(state: Mapping[str, Any], cfg: Mapping[str, Any]) -> Dict[str, Any]:
    """CLIPModel / CLIPTextModelWithProjection state dict -> ``TextTower(variant="clip")`` params."""
    c = sub_config(cfg, "text")
    sd = StateDict(state, find_prefix(state, ("text_model.", ""), "embeddings.token_embedding.weight"),
                   "clip text")
    return {
        "token_embedding": {"embedding": sd.get("embeddings.token_embedding.weight")},
        "position_embedding": {"embedding": sd.get("embeddings.position_embedding.weight")},
        **encoder_layers(sd, c["num_hidden_layers"], c["num_attention_heads"]),
        "ln_final": sd.layer_norm("final_layer_norm"),
        "projection": StateDict(state, "", "clip").linear("text_projection", bias=False),
    }
