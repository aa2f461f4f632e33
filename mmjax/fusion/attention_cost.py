"""Cost models of the attention fusion blocks (``cross_attention``, ``bottleneck``, ``perceiver``).

Parameters are exact. FLOPs count the matrix multiplies (input projections,
q/k/v/o projections, QK^T, AV, MLPs, output Dense) at 2 per multiply-add;
LayerNorm, softmax, GELU and masking are elementwise and left out (a few
percent at realistic widths).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence, Tuple, Union

from mmjax.fusion.attention_common import AttentionConfigError, _check_common, _check_readout
from mmjax.fusion.bottleneck import _check_bottleneck
from mmjax.fusion.cost import Cost, register_cost
from mmjax.fusion.perceiver import _check_perceiver

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
    mlp_dim=None, share_weights=False, pos_emb=False, pooled_token=False, readout="mean", token_lengths=None,
    **config,
) -> Cost:
    _unknown("perceiver", config)
    _check_readout("perceiver", pooled_token, readout)
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
    read = dim
    if readout == "pooled_token":  # each modality's pooled token, LayerNormed, joins the latent mean
        read += len(dims) * dim
        params += len(dims) * _ln_params(dim)
    params += _ln_params(dim) + (read + 1) * out_dim
    flops += 2 * read * out_dim
    return Cost(params=params, flops=flops)
