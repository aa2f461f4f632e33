"""SigLIP (``model_type`` "siglip", "siglip_vision_model", "siglip_text_model"): both towers.

The towers are :class:`mmjax.encoders.hf.clip.VisionTower` /
:class:`~mmjax.encoders.hf.clip.TextTower` with ``variant="siglip"``, which
differ from CLIP's as the reference does:

Vision: no [CLS] token, a patch-embedding bias, no pre-LayerNorm;
``tokens`` = ``SiglipVisionModel`` ``last_hidden_state`` (B, N, D) (after
``post_layernorm``); ``pooled`` = ``pooler_output`` = ``image_embeds`` (the
attention-pooling head; ``SiglipModel.forward`` L2-normalises it).

Text: bidirectional attention; ``tokens`` = ``last_hidden_state`` (after
``final_layer_norm``); ``pooled`` = ``pooler_output`` = ``text_embeds`` =
``head(h[:, -1])`` (with a bias): SigLIP pads to a fixed length and reads the
last position, so feed it the processor's ``padding="max_length"`` ids.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping

from mmjax.encoders.hf.clip import sub_config, encoder_layers
from mmjax.encoders.hf.weights import HFCheckpointError, StateDict, find_prefix

MODEL_TYPES = ("siglip", "siglip_vision_model", "siglip_text_model")


def vision_kwargs(cfg: Mapping[str, Any]) -> Dict[str, Any]:
    c = sub_config(cfg, "vision")
    if not c.get("vision_use_head", True):
        raise HFCheckpointError("siglip: vision_use_head=False checkpoints (no pooling head) are not supported")
    return dict(hidden_size=c["hidden_size"], num_layers=c["num_hidden_layers"],
                num_heads=c["num_attention_heads"], mlp_dim=c["intermediate_size"], image_size=c["image_size"],
                patch_size=c["patch_size"], num_channels=c.get("num_channels", 3),
                layer_norm_eps=c.get("layer_norm_eps", 1e-6), act=c.get("hidden_act", "gelu_pytorch_tanh"),
                variant="siglip")


def text_kwargs(cfg: Mapping[str, Any]) -> Dict[str, Any]:
    c = sub_config(cfg, "text")
    return dict(vocab_size=c["vocab_size"], hidden_size=c["hidden_size"], num_layers=c["num_hidden_layers"],
                num_heads=c["num_attention_heads"], mlp_dim=c["intermediate_size"],
                max_len=c["max_position_embeddings"],
                projection_dim=c.get("projection_size") or c["hidden_size"],
                layer_norm_eps=c.get("layer_norm_eps", 1e-6), act=c.get("hidden_act", "gelu_pytorch_tanh"),
                variant="siglip")


def _map_head(sd: StateDict, num_heads: int) -> Dict[str, Any]:
    """torch nn.MultiheadAttention (packed in_proj) + LayerNorm + MLP -> ``MAPHead`` params."""
    w, b = sd.get("attention.in_proj_weight"), sd.get("attention.in_proj_bias")
    d = w.shape[1]
    attention = {
        name: {"kernel": w[j * d:(j + 1) * d].T.reshape(d, num_heads, -1),
               "bias": b[j * d:(j + 1) * d].reshape(num_heads, -1)}
        for j, name in enumerate(("query", "key", "value"))
    }
    attention["out"] = sd.merge("attention.out_proj", num_heads)
    return {"probe": sd.get("probe"), "attention": attention, "ln": sd.layer_norm("layernorm"),
            "fc1": sd.linear("mlp.fc1"), "fc2": sd.linear("mlp.fc2")}


def convert_vision(state: Mapping[str, Any], cfg: Mapping[str, Any]) -> Dict[str, Any]:
    """SiglipModel / SiglipVisionModel state dict -> ``VisionTower(variant="siglip")`` params."""
    c = sub_config(cfg, "vision")
    sd = StateDict(state, find_prefix(state, ("vision_model.", ""), "embeddings.patch_embedding.weight"),
                   "siglip vision")
    return {
        "patch_embedding": sd.conv("embeddings.patch_embedding"),
        "position_embedding": {"embedding": sd.get("embeddings.position_embedding.weight")},
        **encoder_layers(sd, c["num_hidden_layers"], c["num_attention_heads"]),
        "ln_post": sd.layer_norm("post_layernorm"),
        "head": _map_head(sd.sub("head."), c["num_attention_heads"]),
    }


def convert_text(state: Mapping[str, Any], cfg: Mapping[str, Any]) -> Dict[str, Any]:
    """SiglipModel / SiglipTextModel state dict -> ``TextTower(variant="siglip")`` params."""
    c = sub_config(cfg, "text")
    sd = StateDict(state, find_prefix(state, ("text_model.", ""), "embeddings.token_embedding.weight"),
                   "siglip text")
    return {
        "token_embedding": {"embedding": sd.get("embeddings.token_embedding.weight")},
        "position_embedding": {"embedding": sd.get("embeddings.position_embedding.weight")},
        **encoder_layers(sd, c["num_hidden_layers"], c["num_attention_heads"]),
        "ln_final": sd.layer_norm("final_layer_norm"),
        "projection": sd.linear("head"),
    }


__all__ = ["vision_kwargs", "text_kwargs", "convert_vision", "convert_text", "MODEL_TYPES"]
