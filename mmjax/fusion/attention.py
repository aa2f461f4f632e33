"""Attention fusion: cross-modal transformers (MulT), bottlenecks (MBT), Perceiver.

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

import functools
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax import errors
from mmjax.fusion.base import FusionInputs, masked_mean, prepare, with_pooled_token
from mmjax.fusion.cost import Cost, register_cost
from mmjax.fusion.registry import register
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


def _pooled_tokens(block: str, inputs: FusionInputs, pooled_token: bool, readout: str) -> FusionInputs:
    """Checks ``readout`` and prepends the pooled tokens when asked (see ``with_pooled_token``)."""
    if readout not in READOUTS:
        raise AttentionConfigError(f"{block}: readout must be one of {READOUTS}, got {readout!r}")
    if readout == "pooled_token" and not pooled_token:
        raise AttentionConfigError(f"{block}: readout='pooled_token' needs pooled_token=True")
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


@register("cross_attention")
class CrossModalAttentionFusion(nn.Module):
    """MulT-style cross-modal transformers (Tsai et al. 2019), for M >= 2 modalities.

    Each modality's tokens (B, T_m, D_m) are projected to (B, T_m, dim). For
    every target α and every source β != α (sorted-name order), a stack of
    ``num_layers`` :class:`CrossAttentionBlock` s lets α's tokens attend to β's
    (queries from α, keys/values from β, β's token mask as key padding mask)
    followed by a LayerNorm; sequences may have different lengths. Per target
    the M-1 outputs are concatenated on the feature axis, (B, T_α, (M-1)·dim),
    masked-mean pooled over α's real tokens (or read out at the pooled token), the M pooled vectors concatenated,
    (B, M·(M-1)·dim), and a final Dense maps to (B, out_dim).

    Missing modality: as a source its tokens are never keys and its slot in
    every target's concatenation is zeros (no contribution); as a target its
    pooled part is zeros (and its returned tokens are zeros).

    Attributes:
      out_dim: output width.
      dim: common token width (divisible by ``num_heads``).
      num_heads, num_layers (per ordered pair), mlp_dim (default 4·dim), dropout_rate.
      pos_emb: add learned positional embeddings (T_m, dim) per modality.
      pooled_token: prepend each modality's pooled vector as one more token
        (``with_pooled_token``; T_m counts it).
      readout: how each modality's tokens become one vector: "mean" (masked
        mean over real tokens) or "pooled_token" (the prepended token, like a
        class token; needs pooled_token=True). With small CNN encoders, whose
        per-position tokens say little alone, "pooled_token" learns far faster.
      return_tokens: return ``(pooled (B, out_dim), {m: (B, T_m, (M-1)·dim)})``.
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
    return_tokens: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features, modality_mask=None, *, train: bool = False):
        inputs = prepare(features, modality_mask, block="cross_attention")
        inputs = _pooled_tokens("cross_attention", inputs, self.pooled_token, self.readout)
        mlp_dim = _check_common("cross_attention", self.dim, self.num_heads, self.num_layers, self.mlp_dim)
        x = _project_tokens(self, inputs, self.dim, self.pos_emb)
        masks = inputs.token_mask
        pooled, tokens = [], {}
        for a in inputs.names:
            per_source = []
            for b in inputs.names:
                if b == a:
                    continue
                h = x[a]
                for i in range(self.num_layers):
                    h = CrossAttentionBlock(
                        self.num_heads, mlp_dim, self.dropout_rate, self.dtype, self.param_dtype,
                        name=f"{a}_from_{b}_{i}",
                    )(h, x[b], masks[b], train=train)
                h = layer_norm(self.dtype, self.param_dtype, f"{a}_from_{b}_norm")(h)
                per_source.append(jnp.where(masks[b].any(-1)[:, None, None], h, 0))
            t = jnp.concatenate(per_source, axis=-1)
            t = jnp.where(masks[a][..., None], t, 0)
            tokens[a] = t
            pooled.append(_read_out(t, masks[a], self.readout))
        z = jnp.concatenate(pooled, axis=-1)
        out = dense(self.out_dim, dtype=self.dtype, param_dtype=self.param_dtype, name="out")(z)
        return (out, tokens) if self.return_tokens else out


@register("bottleneck")
class BottleneckFusion(nn.Module):
    """Multimodal Bottleneck Transformer (Nagrani et al. 2021), for M >= 2 modalities.

    Each modality's tokens are projected to (B, T_m, dim) and run through
    ``num_layers`` pre-LN transformer layers. Layers ``i < fusion_layer`` are
    per-modality self-attention only. From ``fusion_layer`` on, modality m's
    layer self-attends over [own tokens; n_b shared bottleneck tokens]
    (B, T_m + n_b, dim), and after each such layer the updated bottleneck
    tokens are averaged over the modalities present in that example: the
    bottlenecks are the only path between modalities. Each modality is then
    LayerNormed and masked-mean pooled over its real tokens (or read out at the pooled token); the output is the
    mean over present modalities of these (B, dim) vectors, Dense to (B, out_dim).

    Missing modality (or one with no real token): its tokens are never keys, it
    is excluded from the bottleneck average and from the output mean. An
    example with no modality keeps the previous bottleneck tokens and outputs
    the output layer's bias.

    Attributes:
      out_dim: output width.
      dim, num_heads, num_layers, mlp_dim (default 4·dim), dropout_rate.
      fusion_layer: first layer with bottleneck exchange, 0 <= fusion_layer <=
        num_layers (== num_layers: no exchange, late fusion of the pooled outputs).
      num_bottlenecks: n_b learned bottleneck tokens (n_b, dim).
      share_weights: one set of layer weights for all modalities (input
        projections stay per modality since the D_m differ).
      pos_emb: add learned positional embeddings (T_m, dim) per modality.
      pooled_token, readout: as in :class:`CrossModalAttentionFusion`.
    """

    out_dim: int
    dim: int = 64
    num_heads: int = 4
    num_layers: int = 2
    fusion_layer: int = 0
    num_bottlenecks: int = 4
    mlp_dim: Optional[int] = None
    dropout_rate: float = 0.0
    share_weights: bool = False
    pos_emb: bool = False
    pooled_token: bool = False
    readout: str = "mean"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features, modality_mask=None, *, train: bool = False) -> Array:
        inputs = prepare(features, modality_mask, block="bottleneck")
        inputs = _pooled_tokens("bottleneck", inputs, self.pooled_token, self.readout)
        mlp_dim = _check_common("bottleneck", self.dim, self.num_heads, self.num_layers, self.mlp_dim)
        _check_bottleneck(self.num_layers, self.fusion_layer, self.num_bottlenecks)
        names = inputs.names
        x = _project_tokens(self, inputs, self.dim, self.pos_emb)
        safe, has = {}, {}
        for n in names:
            safe[n], has[n] = _safe_key_mask(inputs.token_mask[n])
        weight = jnp.stack([has[n] for n in names], axis=1).astype(self.dtype)  # (B, M)
        count = weight.sum(axis=1)

        owners = ("shared",) if self.share_weights else names
        blocks = {
            (o, i): _self_block(self, mlp_dim, f"layer_{i}" if self.share_weights else f"{o}_layer_{i}")
            for o in owners
            for i in range(self.num_layers)
        }
        block = lambda n, i: blocks[("shared" if self.share_weights else n), i]  # noqa: E731

        bottleneck = None
        if self.fusion_layer < self.num_layers:
            init = self.param(
                "bottleneck",
                logical(nn.initializers.normal(0.02), (TOKENS_AXIS, EMBED)),
                (self.num_bottlenecks, self.dim),
                self.param_dtype,
            )
            bottleneck = jnp.broadcast_to(
                init.astype(self.dtype)[None], (inputs.batch_size,) + init.shape
            )
        nb = self.num_bottlenecks
        for i in range(self.num_layers):
            if i < self.fusion_layer:
                for n in names:
                    x[n] = block(n, i)(x[n], safe[n], train=train)
                continue
            updated = []
            for n in names:
                t = x[n].shape[1]
                seq = jnp.concatenate([x[n], bottleneck], axis=1)
                mask = jnp.concatenate([safe[n], jnp.ones((inputs.batch_size, nb), bool)], axis=1)
                out = block(n, i)(seq, mask, train=train)
                x[n] = out[:, :t]
                updated.append(out[:, t:])
            stacked = jnp.stack(updated, axis=1)  # (B, M, n_b, dim)
            # An average, not a matmul: elementwise, so the cost model's matmul count holds.
            total = (jnp.where(weight[..., None, None] > 0, stacked, 0) * weight[..., None, None]).sum(axis=1)
            avg = total / jnp.maximum(count, 1)[:, None, None]
            bottleneck = jnp.where(count[:, None, None] > 0, avg, bottleneck)

        pooled = []
        for n in owners:
            norm = layer_norm(self.dtype, self.param_dtype, "ln_final" if self.share_weights else f"{n}_ln_final")
            for m in (names if self.share_weights else (n,)):
                pooled.append(_read_out(norm(x[m]), inputs.token_mask[m], self.readout))
        pooled = jnp.stack(pooled, axis=1)  # (B, M, dim), names order
        pooled = jnp.where(weight[..., None] > 0, pooled, 0)
        z = pooled.sum(axis=1) / jnp.maximum(count, 1)[:, None]
        return dense(self.out_dim, dtype=self.dtype, param_dtype=self.param_dtype, name="out")(z)


def _check_bottleneck(num_layers: int, fusion_layer: int, num_bottlenecks: int) -> None:
    if not 0 <= fusion_layer <= num_layers:
        raise AttentionConfigError(
            f"bottleneck: fusion_layer={fusion_layer} must be in [0, num_layers={num_layers}]"
        )
    if fusion_layer < num_layers and num_bottlenecks < 1:
        raise AttentionConfigError(f"bottleneck: num_bottlenecks must be >= 1, got {num_bottlenecks}")


@register("perceiver")
class PerceiverFusion(nn.Module):
    """Perceiver (Jaegle et al. 2021) over the tokens of all modalities.

    Each modality's tokens are projected to (B, T_m, dim) plus a learned
    modality embedding (dim,) (so the latents can tell the sources apart),
    and concatenated into a (B, sum T_m, dim) byte array with its mask. The
    ``num_latents`` learned latents (N, dim) then go ``num_layers`` times
    through a :class:`CrossAttentionBlock` onto the byte array followed by
    ``num_self_layers`` latent self-attention blocks. The output is the mean
    of the LayerNormed latents (B, dim), Dense to (B, out_dim).

    Missing modality: its tokens are never keys. An example with no modality
    at all gets zero cross-attention updates, so its latents depend only on
    the learned parameters: a finite output.

    Attributes:
      out_dim: output width.
      dim, num_heads, num_layers (repeats), mlp_dim (default 4·dim), dropout_rate.
      num_latents: N.
      num_self_layers: latent self-attention blocks per repeat.
      share_weights: all repeats use the same cross- and self-attention weights.
      pos_emb: add learned positional embeddings (T_m, dim) per modality.
      pooled_token: prepend each modality's pooled vector as one more token
        (``with_pooled_token``; T_m counts it).
    """

    out_dim: int
    dim: int = 64
    num_heads: int = 4
    num_layers: int = 1
    num_latents: int = 8
    num_self_layers: int = 1
    mlp_dim: Optional[int] = None
    dropout_rate: float = 0.0
    share_weights: bool = False
    pos_emb: bool = False
    pooled_token: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features, modality_mask=None, *, train: bool = False) -> Array:
        inputs = prepare(features, modality_mask, block="perceiver")
        inputs = _pooled_tokens("perceiver", inputs, self.pooled_token, "mean")
        mlp_dim = _check_common("perceiver", self.dim, self.num_heads, self.num_layers, self.mlp_dim)
        _check_perceiver(self.num_latents, self.num_self_layers)
        x = _project_tokens(self, inputs, self.dim, self.pos_emb)
        byte, byte_mask = [], []
        for n in inputs.names:
            emb = self.param(
                f"modality_emb_{n}", logical(nn.initializers.normal(0.02), (EMBED,)), (self.dim,),
                self.param_dtype,
            )
            byte.append(x[n] + emb.astype(self.dtype))
            byte_mask.append(inputs.token_mask[n])
        byte = jnp.concatenate(byte, axis=1)
        byte_mask = jnp.concatenate(byte_mask, axis=1)

        latents = self.param(
            "latents",
            logical(nn.initializers.normal(0.02), (TOKENS_AXIS, EMBED)),
            (self.num_latents, self.dim),
            self.param_dtype,
        )
        z = jnp.broadcast_to(latents.astype(self.dtype)[None], (inputs.batch_size,) + latents.shape)
        repeats = 1 if self.share_weights else self.num_layers
        cross = [
            CrossAttentionBlock(
                self.num_heads, mlp_dim, self.dropout_rate, self.dtype, self.param_dtype, name=f"cross_{r}"
            )
            for r in range(repeats)
        ]
        selfs = [
            [_self_block(self, mlp_dim, f"self_{r}_{s}") for s in range(self.num_self_layers)]
            for r in range(repeats)
        ]
        for r in range(self.num_layers):
            j = 0 if self.share_weights else r
            z = cross[j](z, byte, byte_mask, train=train)
            for blk in selfs[j]:
                z = blk(z, None, train=train)
        z = layer_norm(self.dtype, self.param_dtype, "ln_final")(z).mean(axis=1)
        return dense(self.out_dim, dtype=self.dtype, param_dtype=self.param_dtype, name="out")(z)


def _check_perceiver(num_latents: int, num_self_layers: int) -> None:
    if num_latents < 1:
        raise AttentionConfigError(f"perceiver: num_latents must be >= 1, got {num_latents}")
    if num_self_layers < 0:
        raise AttentionConfigError(f"perceiver: num_self_layers must be >= 0, got {num_self_layers}")


# --------------------------------------------------------------------------
# Cost models. Parameters are exact. FLOPs count the matrix multiplies (input
# projections, q/k/v/o projections, QK^T, AV, MLPs, output Dense) at 2 per
# multiply-add; LayerNorm, softmax, GELU and masking are elementwise and left
# out (a few percent at realistic widths).
# --------------------------------------------------------------------------

_IGNORED = ("dtype", "param_dtype", "dropout_rate", "return_tokens", "readout")


def _lengths(block: str, dims: Sequence[int], token_lengths: Union[None, Sequence[int], Mapping[str, int]],
             pooled_token: bool = False):
    if pooled_token:
        return [t + 1 for t in _lengths(block, dims, token_lengths)]
    if token_lengths is None:
        return [1] * len(dims)  # pooled inputs are one token each
    if isinstance(token_lengths, Mapping):
        token_lengths = [token_lengths[k] for k in sorted(token_lengths)]
    token_lengths = list(token_lengths)
    if len(token_lengths) != len(dims):
        raise AttentionConfigError(
            f"{block} cost: token_lengths has {len(token_lengths)} entries for {len(dims)} modalities"
        )
    return token_lengths


def _unknown(block: str, config: Mapping[str, Any]) -> None:
    extra = sorted(set(config) - set(_IGNORED))
    if extra:
        raise AttentionConfigError(f"{block} cost: unknown config keys {extra}")


def _ln_params(d: int) -> int:
    return 2 * d


def _mha_params(d: int) -> int:
    return 4 * d * d + 4 * d


def _mlp_params(d: int, m: int) -> int:
    return 2 * d * m + m + d


def _self_block_params(d: int, m: int) -> int:
    return 2 * _ln_params(d) + _mha_params(d) + _mlp_params(d, m)


def _cross_block_params(d: int, m: int) -> int:
    return 3 * _ln_params(d) + _mha_params(d) + _mlp_params(d, m)


def _mha_flops(d: int, t: int, s: int) -> int:
    """t queries, s keys, width d: q and o projections on t, k and v on s, QK^T and AV."""
    return 2 * (2 * t * d * d + 2 * s * d * d + 2 * t * s * d)


def _mlp_flops(d: int, m: int, t: int) -> int:
    return 2 * 2 * t * d * m


def _self_block_flops(d: int, m: int, t: int) -> int:
    return _mha_flops(d, t, t) + _mlp_flops(d, m, t)


def _cross_block_flops(d: int, m: int, t: int, s: int) -> int:
    return _mha_flops(d, t, s) + _mlp_flops(d, m, t)


def _projection_cost(dims, lengths, dim, pos_emb) -> Tuple[int, int]:
    params = sum((d + 1) * dim for d in dims) + (sum(lengths) * dim if pos_emb else 0)
    flops = sum(2 * t * d * dim for d, t in zip(dims, lengths))
    return params, flops


@register_cost("cross_attention")
def _cross_attention_cost(
    dims, out_dim, *, dim=64, num_heads=4, num_layers=1, mlp_dim=None, pos_emb=False,
    pooled_token=False, token_lengths=None, **config,
) -> Cost:
    _unknown("cross_attention", config)
    mlp = _check_common("cross_attention", dim, num_heads, num_layers, mlp_dim)
    lengths = _lengths("cross_attention", dims, token_lengths, pooled_token)
    m = len(dims)
    params, flops = _projection_cost(dims, lengths, dim, pos_emb)
    for a in range(m):
        for b in range(m):
            if a == b:
                continue
            params += num_layers * _cross_block_params(dim, mlp) + _ln_params(dim)
            flops += num_layers * _cross_block_flops(dim, mlp, lengths[a], lengths[b])
    z = m * (m - 1) * dim
    params += (z + 1) * out_dim
    flops += 2 * z * out_dim
    return Cost(params=params, flops=flops)


@register_cost("bottleneck")
def _bottleneck_cost(
    dims, out_dim, *, dim=64, num_heads=4, num_layers=2, fusion_layer=0, num_bottlenecks=4,
    mlp_dim=None, share_weights=False, pos_emb=False, pooled_token=False, token_lengths=None,
    **config,
) -> Cost:
    _unknown("bottleneck", config)
    mlp = _check_common("bottleneck", dim, num_heads, num_layers, mlp_dim)
    _check_bottleneck(num_layers, fusion_layer, num_bottlenecks)
    lengths = _lengths("bottleneck", dims, token_lengths, pooled_token)
    m = len(dims)
    params, flops = _projection_cost(dims, lengths, dim, pos_emb)
    copies = 1 if share_weights else m
    params += copies * (num_layers * _self_block_params(dim, mlp) + _ln_params(dim))
    if fusion_layer < num_layers:
        params += num_bottlenecks * dim
    for i in range(num_layers):
        extra = num_bottlenecks if i >= fusion_layer else 0
        flops += sum(_self_block_flops(dim, mlp, t + extra) for t in lengths)
    params += (dim + 1) * out_dim
    flops += 2 * dim * out_dim
    return Cost(params=params, flops=flops)


@register_cost("perceiver")
def _perceiver_cost(
    dims, out_dim, *, dim=64, num_heads=4, num_layers=1, num_latents=8, num_self_layers=1,
    mlp_dim=None, share_weights=False, pos_emb=False, pooled_token=False, token_lengths=None,
    **config,
) -> Cost:
    _unknown("perceiver", config)
    mlp = _check_common("perceiver", dim, num_heads, num_layers, mlp_dim)
    _check_perceiver(num_latents, num_self_layers)
    lengths = _lengths("perceiver", dims, token_lengths, pooled_token)
    params, flops = _projection_cost(dims, lengths, dim, pos_emb)
    params += len(dims) * dim + num_latents * dim
    repeats = 1 if share_weights else num_layers
    params += repeats * (_cross_block_params(dim, mlp) + num_self_layers * _self_block_params(dim, mlp))
    s = sum(lengths)
    flops += num_layers * (
        _cross_block_flops(dim, mlp, num_latents, s) + num_self_layers * _self_block_flops(dim, mlp, num_latents)
    )
    params += _ln_params(dim) + (dim + 1) * out_dim
    flops += 2 * dim * out_dim
    return Cost(params=params, flops=flops)


__all__ = [
    "AttentionConfigError",
    "BottleneckFusion",
    "CrossAttentionBlock",
    "CrossModalAttentionFusion",
    "PerceiverFusion",
]
