"""Attention fusion: cross-modal transformers (MulT), bottlenecks (MBT), Perceiver.

The blocks live in one file each (:mod:`~mmjax.fusion.cross_attention`,
:mod:`~mmjax.fusion.bottleneck`, :mod:`~mmjax.fusion.perceiver`), what they
share (masking rule, config checks, projections) in
:mod:`~mmjax.fusion.attention_common` and their cost models in
:mod:`~mmjax.fusion.attention_cost`. This module imports them all (which
registers the blocks and their costs) and keeps the old import paths.
"""
from mmjax.fusion.attention_common import (  # noqa: F401
    READOUTS, TOKENS_AXIS, AttentionConfigError, CrossAttentionBlock, _check_common, _check_readout,
    _pooled_tokens, _project_tokens, _read_out, _safe_key_mask, _self_block,
)
from mmjax.fusion.cross_attention import CrossModalAttentionFusion
from mmjax.fusion.bottleneck import BottleneckFusion, _check_bottleneck  # noqa: F401
from mmjax.fusion.perceiver import PerceiverFusion, _check_perceiver  # noqa: F401
from mmjax.fusion.attention_cost import (  # noqa: F401
    _cross_block_flops, _cross_block_params, _lengths, _mha_flops, _mha_params, _mlp_flops, _mlp_params,
    _projection_cost, _self_block_flops, _self_block_params,
)

__all__ = [
    "AttentionConfigError",
    "BottleneckFusion",
    "CrossAttentionBlock",
    "CrossModalAttentionFusion",
    "PerceiverFusion",
]
