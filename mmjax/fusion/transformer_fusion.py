"""MultiBench's transformer fusions: ``early_transformer`` and ``late_transformer``.

MultiBench (``fusions/common_fusions.py``) has ``EarlyFusionTransformer`` (one
transformer over the stacked, time-aligned modalities) and
``LateFusionTransformer`` (one transformer per modality, the outputs
concatenated and fused by a Linear). Here both take token sequences of any
lengths (a pooled (B, D_m) input is one token), project every modality to
``dim`` and use :class:`mmjax.layers.TransformerStack` (pre-LN, GELU MLP,
final LayerNorm). MultiBench reads the last time step; sequences here may be
padded, so the readout is the masked mean over real tokens (or the prepended
pooled token, as in the attention blocks).

Masking: padded or missing tokens are never attention keys; a sequence with
no real token attends over all of its (zero) positions and its readout is
replaced by zeros, so forward and backward stay finite.
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.fusion.attention_common import _check_common, _check_readout, _project_tokens
from mmjax.fusion.attention_cost import _lengths, _projection_cost, _self_block_flops, _self_block_params
from mmjax.fusion.base import masked_mean, prepare, with_pooled_token
from mmjax.fusion.cost import Cost, register_cost
from mmjax.fusion.registry import register
from mmjax.layers import dense
from mmjax.layers.transformer import TransformerStack
from mmjax.sharding import EMBED, logical

Array = jax.Array


def _check(block: str, dim: int, num_heads: int, num_layers: int, mlp_dim: Optional[int], pooled_token: bool,
           readout: str) -> int:
    """The attention blocks' checks (AttentionConfigError naming block and key); returns mlp_dim."""
    mlp = _check_common(block, dim, num_heads, num_layers, mlp_dim)
    _check_readout(block, pooled_token, readout)
    return mlp


def _stack(module: nn.Module, mlp_dim: int, name: str) -> TransformerStack:
    return TransformerStack(module.num_layers, module.num_heads, mlp_dim, module.dropout_rate,
                            dtype=module.dtype, param_dtype=module.param_dtype, name=name)


@register("early_transformer")
class EarlyTransformerFusion(nn.Module):
    """One transformer over the tokens of all modalities (MultiBench's early-fusion transformer).

        x_m = W_m tokens_m + b_m + e_m (+ pos_m)     (B, T_m, dim), e_m a learned modality embedding
        h   = TransformerStack([x_1; ...; x_M])      (B, sum T_m, dim), one sequence
        z   = Dense(out_dim)(readout(h))             (B, out_dim)

    readout "mean": masked mean over all real tokens; "pooled_token": mean
    over the present modalities' prepended pooled tokens.

    Missing modality: its tokens are never keys and never read out. An example
    with no modality present gets readout 0, so z is the output bias.

    Attributes:
      out_dim: output width.
      dim (divisible by num_heads), num_heads, num_layers, mlp_dim (default 4 dim), dropout_rate.
      pos_emb: learned positional embeddings (T_m, dim) per modality.
      pooled_token, readout: as in the attention blocks (``with_pooled_token``).
    """

    out_dim: int
    dim: int = 64
    num_heads: int = 4
    num_layers: int = 1
    mlp_dim: Optional[int] = None
    dropout_rate: float = 0.0
    pos_emb: bool = False
    pooled_token: bool = False
    readout: str = "mean"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features, modality_mask=None, *, train: bool = False) -> Array:
        inputs = prepare(features, modality_mask, block="early_transformer")
        mlp_dim = _check("early_transformer", self.dim, self.num_heads, self.num_layers, self.mlp_dim,
                         self.pooled_token, self.readout)
        if self.pooled_token:
            inputs = with_pooled_token(inputs, "early_transformer")
        x = _project_tokens(self, inputs, self.dim, self.pos_emb)
        seq, mask, read = [], [], []
        for n in inputs.names:
            emb = self.param(f"modality_emb_{n}", logical(nn.initializers.normal(0.02), (EMBED,)), (self.dim,),
                             self.param_dtype)
            seq.append(x[n] + emb.astype(self.dtype))
            mask.append(inputs.token_mask[n])
            first = jnp.zeros_like(inputs.token_mask[n]).at[:, 0].set(inputs.present[n])
            read.append(first if self.readout == "pooled_token" else inputs.token_mask[n])
        seq, mask, read = (jnp.concatenate(a, axis=1) for a in (seq, mask, read))
        has = mask.any(axis=-1)
        h = _stack(self, mlp_dim, "transformer")(seq, mask | ~has[:, None], train=train)
        z = jnp.where(has[:, None], masked_mean(h, read), 0)
        return dense(self.out_dim, dtype=self.dtype, param_dtype=self.param_dtype, name="out")(z)


@register("late_transformer")
class LateTransformerFusion(nn.Module):
    """A transformer per modality, then fusion of the pooled outputs (MultiBench's late-fusion transformer).

        h_m = readout(TransformerStack_m(W_m tokens_m + b_m (+ pos_m)))   (B, dim) each, own weights
        z   = Dense(out_dim)([h_1; ...; h_M])                           (MultiBench's ConcatWithLinear)

    Missing modality: its h_m is zeros (its slot in the concatenation adds nothing but the bias).

    Attributes:
      out_dim: output width.
      dim (divisible by num_heads), num_heads, num_layers (per modality), mlp_dim (default 4 dim), dropout_rate.
      pos_emb, pooled_token, readout: as in :class:`EarlyTransformerFusion`.
    """

    out_dim: int
    dim: int = 64
    num_heads: int = 4
    num_layers: int = 1
    mlp_dim: Optional[int] = None
    dropout_rate: float = 0.0
    pos_emb: bool = False
    pooled_token: bool = False
    readout: str = "mean"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features, modality_mask=None, *, train: bool = False) -> Array:
        inputs = prepare(features, modality_mask, block="late_transformer")
        mlp_dim = _check("late_transformer", self.dim, self.num_heads, self.num_layers, self.mlp_dim,
                         self.pooled_token, self.readout)
        if self.pooled_token:
            inputs = with_pooled_token(inputs, "late_transformer")
        x = _project_tokens(self, inputs, self.dim, self.pos_emb)
        pooled = []
        for n in inputs.names:
            mask = inputs.token_mask[n]
            has = mask.any(axis=-1)
            h = _stack(self, mlp_dim, f"transformer_{n}")(x[n], mask | ~has[:, None], train=train)
            h = h[:, 0] if self.readout == "pooled_token" else masked_mean(h, mask)
            pooled.append(jnp.where(has[:, None], h, 0))
        z = jnp.concatenate(pooled, axis=-1)
        return dense(self.out_dim, dtype=self.dtype, param_dtype=self.param_dtype, name="out")(z)


def _transformer_cost(block, dims, out_dim, dim, num_heads, num_layers, mlp_dim, pos_emb, pooled_token,
                      readout, token_lengths, early):
    mlp = _check(block, dim, num_heads, num_layers, mlp_dim, pooled_token, readout)
    lengths = _lengths(block, dims, token_lengths, pooled_token)
    params, flops = _projection_cost(dims, lengths, dim, pos_emb)
    stack_params = num_layers * _self_block_params(dim, mlp) + 2 * dim  # + the final LayerNorm
    if early:
        params += len(dims) * dim + stack_params
        flops += num_layers * _self_block_flops(dim, mlp, sum(lengths))
        z = dim
    else:
        params += len(dims) * stack_params
        flops += sum(num_layers * _self_block_flops(dim, mlp, t) for t in lengths)
        z = len(dims) * dim
    return Cost(params=params + (z + 1) * out_dim, flops=flops + 2 * z * out_dim)


@register_cost("early_transformer")
def _early_cost(dims, out_dim, *, dim=64, num_heads=4, num_layers=1, mlp_dim=None, pos_emb=False,
                pooled_token=False, readout="mean", token_lengths=None, **config) -> Cost:
    """Projections, the transformer over sum_m T_m tokens, the output Dense (matmuls only)."""
    return _transformer_cost("early_transformer", dims, out_dim, dim, num_heads, num_layers, mlp_dim, pos_emb,
                             pooled_token, readout, token_lengths, early=True)


@register_cost("late_transformer")
def _late_cost(dims, out_dim, *, dim=64, num_heads=4, num_layers=1, mlp_dim=None, pos_emb=False,
               pooled_token=False, readout="mean", token_lengths=None, **config) -> Cost:
    """Projections, M transformers over T_m tokens each, the output Dense (matmuls only)."""
    return _transformer_cost("late_transformer", dims, out_dim, dim, num_heads, num_layers, mlp_dim, pos_emb,
                             pooled_token, readout, token_lengths, early=False)
