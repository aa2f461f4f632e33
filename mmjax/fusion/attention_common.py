"""What the attention fusion blocks share: config checks, token projection, masking, the cross-attention block.

All three work on token sequences: ``prepare`` gives each modality's tokens
(B, T_m, D_m) with a (B, T_m) mask (a pooled (B, D_m) input is one token), and
each block first projects every modality to a common width ``dim``.

Masking rule shared by the three blocks: padded or missing tokens are never
attention keys. A query whose keys are *all* masked (a target attending to a
missing source, latents attending to an example with no modality) would give a
uniform softmax over garbage (or NaN in fused GPU kernels), so such rows attend
to an unmasked copy of the keys and their attention output is then replaced by
zeros with ``jnp.where``: forward and backward stay finite and the missing
source contributes exactly nothing.

Attention weights: every attention of the three blocks is a
:class:`~mmjax.fusion.recorded_attention.RecordedAttention`, which sows its
softmax weights (B, heads, Tq, Tk) under ``intermediates`` when that
collection is mutable (``mmjax.explain.attention_maps``); the forward result
is the same either way. Rows that attend to a missing source are recorded as zeros.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax import errors
from mmjax.fusion.base import FusionInputs, masked_mean, with_pooled_token
from mmjax.fusion.recorded_attention import RecordedAttention, RecordedTransformerBlock
from mmjax.layers import MlpBlock, dense
from mmjax.layers.transformer import layer_norm
from mmjax.sharding import EMBED, LENGTH, logical

Array = jax.Array

# Learned token sets (latents, bottleneck tokens, positional embeddings) are
# short and replicated, like any sequence-length axis.
TOKENS_AXIS = LENGTH


class AttentionConfigError(errors.ConfigError):
    """Bad configuration of an attention fusion block (names the offending key)."""


def _check_common(block: str, dim: int, num_heads: int, num_layers: int, mlp_dim: Optional[int]) -> int:
    if dim <= 0 or num_heads <= 0:
        raise AttentionConfigError(f"{block}: dim={dim} and num_heads={num_heads} must be positive")
    if dim % num_heads:
        raise AttentionConfigError(f"{block}: dim={dim} is not divisible by num_heads={num_heads}")
    if num_layers < 1:
        raise AttentionConfigError(f"{block}: num_layers must be >= 1, got {num_layers}")
    mlp = 4 * dim if mlp_dim is None else mlp_dim
    if mlp <= 0:
        raise AttentionConfigError(f"{block}: mlp_dim must be positive, got {mlp_dim}")
    return mlp


READOUTS = ("mean", "pooled_token")


def _check_readout(block: str, pooled_token: bool, readout: str) -> None:
    if readout not in READOUTS:
        raise AttentionConfigError(f"{block}: readout must be one of {READOUTS}, got {readout!r}")
    if readout == "pooled_token" and not pooled_token:
        raise AttentionConfigError(f"{block}: readout='pooled_token' needs pooled_token=True")


def _pooled_tokens(block: str, inputs: FusionInputs, pooled_token: bool, readout: str) -> FusionInputs:
    """Checks ``readout`` and prepends the pooled tokens when asked (see ``with_pooled_token``)."""
    _check_readout(block, pooled_token, readout)
    return with_pooled_token(inputs, block) if pooled_token else inputs


def _read_out(tokens: Array, mask: Array, readout: str) -> Array:
    """(B, T, D) tokens -> (B, D): the masked mean, or the prepended pooled token."""
    return tokens[:, 0] if readout == "pooled_token" else masked_mean(tokens, mask)


def _safe_key_mask(mask: Array) -> Tuple[Array, Array]:
    """(B, S) key mask -> (mask with all-masked rows opened, (B,) any real key)."""
    has = mask.any(axis=-1)
    return mask | ~has[:, None], has


def _project_tokens(
    module: nn.Module, inputs: FusionInputs, dim: int, pos_emb: bool
) -> Dict[str, Array]:
    """Each modality's tokens (B, T_m, D_m) -> (B, T_m, dim) [+ learned positions].

    Must be called from inside ``module``'s compact ``__call__``.
    """
    out = {}
    for n in inputs.names:
        x = inputs.tokens[n].astype(module.dtype)
        x = dense(dim, dtype=module.dtype, param_dtype=module.param_dtype, name=f"proj_{n}")(x)
        if pos_emb:
            pos = module.param(
                f"pos_emb_{n}",
                logical(nn.initializers.normal(0.02), (TOKENS_AXIS, EMBED)),
                (x.shape[1], dim),
                module.param_dtype,
            )
            x = x + pos.astype(module.dtype)[None]
        out[n] = x
    return out


class CrossAttentionBlock(nn.Module):
    """Pre-LN cross-attention block: x + Attn(LN x, LN context) ; x + MLP(LN x).

    Shapes: x (B, T, D) queries, context (B, S, Dc) keys/values, context_mask
    (B, S) bool (True = real key). Returns (B, T, D). Rows of an example whose
    context is entirely masked get a zero attention update (see module doc).
    """

    num_heads: int
    mlp_dim: int
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, context: Array, context_mask: Array, train: bool = False) -> Array:
        safe, has = _safe_key_mask(context_mask)
        h = layer_norm(self.dtype, self.param_dtype, "ln_q")(x)
        c = layer_norm(self.dtype, self.param_dtype, "ln_kv")(context)
        a = RecordedAttention(
            num_heads=self.num_heads,
            qkv_dim=x.shape[-1],
            out_dim=x.shape[-1],
            dropout_rate=self.dropout_rate,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="cross_attn",
        )(h, c, mask=safe[:, None, :], train=train, keep=has)
        x = x + jnp.where(has[:, None, None], a, 0)
        h = layer_norm(self.dtype, self.param_dtype, "ln_mlp")(x)
        return x + MlpBlock(self.mlp_dim, self.dropout_rate, self.dtype, self.param_dtype, name="mlp")(
            h, train=train
        )


def _self_block(module: nn.Module, mlp_dim: int, name: str) -> RecordedTransformerBlock:
    return RecordedTransformerBlock(
        num_heads=module.num_heads,
        mlp_dim=mlp_dim,
        dropout_rate=module.dropout_rate,
        dtype=module.dtype,
        param_dtype=module.param_dtype,
        name=name,
    )
