"""BERT and RoBERTa (``model_type`` "bert", "roberta", "xlm-roberta") text encoders.

``tokens`` = the reference ``BertModel`` / ``RobertaModel`` ``last_hidden_state``;
``pooled`` = its ``pooler_output`` (tanh(W h_[CLS] + b)) with ``pooling="pooler"``
(the default), or the mean of the real tokens' states with ``pooling="mean"``
(sentence-transformers, e.g. all-MiniLM-L6-v2), L2-normalised if ``normalize``.
``pooler=False`` leaves the pooler's params out (checkpoints saved without it).
RoBERTa differs from BERT only in its position ids, which count real tokens
from ``pad_token_id + 1``.
"""
from __future__ import annotations

import functools
from typing import Any, Dict, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.encoders.hf.layers import EncoderLayer, convert_layer, layer_norm
from mmjax.encoders.hf.weights import HFCheckpointError, StateDict, find_prefix
from mmjax.layers import dense
from mmjax.sharding import EMBED, LENGTH, VOCAB, logical
from mmjax.types import Encoded

Array = jax.Array
MODEL_TYPES = ("bert", "roberta", "xlm-roberta")
POOLINGS = ("pooler", "mean")


class BertEncoder(nn.Module):
    """input_ids (B, L) int, attention mask (B, L) bool -> Encoded(pooled (B, D), tokens (B, L, D), mask)."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    mlp_dim: int
    max_len: int
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    act: str = "gelu"
    pad_token_id: int = 0
    roberta: bool = False
    pooling: str = "pooler"
    pooler: bool = True
    normalize: bool = False
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, ids: Array, mask: Optional[Array] = None, *, train: bool = False,
                 token_type_ids: Optional[Array] = None) -> Encoded:
        """ids (B, L); mask (B, L) bool (default ids != pad_token_id, what the tokenizer gives);
        token_type_ids (B, L) (default 0)."""
        if ids.ndim != 2 or not jnp.issubdtype(ids.dtype, jnp.integer):
            raise HFCheckpointError(f"bert: input_ids must be (B, L) integers, got {ids.dtype} {tuple(ids.shape)}")
        mask = (ids != self.pad_token_id) if mask is None else mask.astype(bool)
        if self.roberta:  # create_position_ids_from_input_ids: real tokens count from pad_token_id + 1
            real = (ids != self.pad_token_id).astype(jnp.int32)
            positions = jnp.cumsum(real, axis=1) * real + self.pad_token_id
        else:
            positions = jnp.arange(ids.shape[1])[None, :]
        token_type_ids = jnp.zeros_like(ids) if token_type_ids is None else token_type_ids
        embed = functools.partial(nn.Embed, features=self.hidden_size, dtype=self.dtype,
                                  param_dtype=self.param_dtype)
        init = nn.initializers.normal(0.02)
        x = embed(self.vocab_size, embedding_init=logical(init, (VOCAB, EMBED)), name="word_embeddings")(ids)
        x = x + embed(self.max_len, embedding_init=logical(init, (LENGTH, EMBED)),
                      name="position_embeddings")(positions)
        x = x + embed(self.type_vocab_size, embedding_init=logical(init, (None, EMBED)),
                      name="token_type_embeddings")(token_type_ids)
        x = layer_norm(self.layer_norm_eps, self.dtype, self.param_dtype, "ln_embeddings")(x)
        x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
        for i in range(self.num_layers):
            x = EncoderLayer(self.num_heads, self.mlp_dim, self.act, pre_norm=False,
                             layer_norm_eps=self.layer_norm_eps, dropout_rate=self.dropout_rate,
                             dtype=self.dtype, param_dtype=self.param_dtype,
                             name=f"layer_{i}")(x, mask[:, None, :], train=train)
        if self.pooling not in POOLINGS or (self.pooling == "pooler" and not self.pooler):
            raise HFCheckpointError(f"bert: pooling must be one of {POOLINGS} ('pooler' needs pooler=True), "
                                    f"got {self.pooling!r}")
        if self.pooler:  # BertModel's pooler: its params exist whichever pooling is read
            # (embed, None): a mesh axis may appear once per weight, so the output side is replicated
            pooled = jnp.tanh(dense(self.hidden_size, axes=(EMBED, None), dtype=self.dtype,
                                    param_dtype=self.param_dtype, name="pooler")(x[:, 0]))
        if self.pooling == "mean":
            m = mask[..., None]
            pooled = jnp.where(m, x, 0).astype(jnp.float32).sum(1) / jnp.maximum(m.sum(1), 1e-9)
        if self.normalize:
            pooled = pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
        return Encoded(pooled=pooled.astype(x.dtype), tokens=x, mask=mask)


def module_kwargs(cfg: Mapping[str, Any]) -> Dict[str, Any]:
    """``BertEncoder`` attributes from a BERT / RoBERTa config.json."""
    if cfg.get("position_embedding_type", "absolute") != "absolute":
        raise HFCheckpointError(f"bert: position_embedding_type {cfg['position_embedding_type']!r} is not "
                                "supported (only 'absolute')")
    return dict(vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
                num_layers=cfg["num_hidden_layers"], num_heads=cfg["num_attention_heads"],
                mlp_dim=cfg["intermediate_size"], max_len=cfg["max_position_embeddings"],
                type_vocab_size=cfg.get("type_vocab_size", 2), layer_norm_eps=cfg.get("layer_norm_eps", 1e-12),
                act=cfg.get("hidden_act", "gelu"), pad_token_id=cfg.get("pad_token_id") or 0,
                roberta=cfg["model_type"] != "bert")


def has_pooler(state: Mapping[str, Any]) -> bool:
    return any(k.endswith("pooler.dense.weight") for k in state)


def convert(state: Mapping[str, Any], cfg: Mapping[str, Any], pooler: bool = True) -> Dict[str, Any]:
    """BertModel / RobertaModel state dict (a bare model or one under ``bert.`` / ``roberta.``) -> params."""
    prefix = find_prefix(state, ("", "bert.", "roberta.", "model."), "embeddings.word_embeddings.weight")
    sd = StateDict(state, prefix, "bert")
    heads = cfg["num_attention_heads"]
    params: Dict[str, Any] = {
        "word_embeddings": {"embedding": sd.get("embeddings.word_embeddings.weight")},
        "position_embeddings": {"embedding": sd.get("embeddings.position_embeddings.weight")},
        "token_type_embeddings": {"embedding": sd.get("embeddings.token_type_embeddings.weight")},
        "ln_embeddings": sd.layer_norm("embeddings.LayerNorm"),
    }
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        params[f"layer_{i}"] = convert_layer(sd, heads, {
            "q": p + "attention.self.query", "k": p + "attention.self.key", "v": p + "attention.self.value",
            "o": p + "attention.output.dense", "ln_1": p + "attention.output.LayerNorm",
            "ln_2": p + "output.LayerNorm", "fc1": p + "intermediate.dense", "fc2": p + "output.dense"})
    if pooler:
        if not sd.has("pooler.dense.weight"):
            raise HFCheckpointError("bert: the checkpoint has no pooler weights; use pooler=False, pooling='mean'")
        params["pooler"] = sd.linear("pooler.dense")
    return params
