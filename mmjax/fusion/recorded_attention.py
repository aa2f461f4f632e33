"""Attention layers of the fusion blocks that record their attention weights.

:class:`RecordedAttention` and :class:`RecordedTransformerBlock` are
:class:`mmjax.layers.MultiHeadAttention` and :class:`mmjax.layers.TransformerBlock`
with ``record_weights=True``: the same parameters, names and forward result. When
the ``"intermediates"`` collection is mutable (``model.apply(...,
mutable=["intermediates"])``) the attention also computes its softmax weights
explicitly and sows them as ``intermediates/.../attention_weights``, (B, heads,
Tq, Tk) float32; otherwise nothing extra is computed.
``mmjax.explain.attention_maps`` reads them.
"""
from __future__ import annotations

from mmjax.layers import MultiHeadAttention, TransformerBlock
from mmjax.layers.attention_ops import WEIGHTS_COLLECTION as COLLECTION, WEIGHTS_NAME as NAME, attention_weights


class RecordedAttention(MultiHeadAttention):
    """:class:`MultiHeadAttention` that sows its weights (B, N, T, S) when "intermediates" is mutable.

    ``keep`` (B,) bool, optional call argument: examples whose attention output the caller
    discards (a query attending to a missing source) have zeros as their recorded weights.
    """

    record_weights: bool = True


class RecordedTransformerBlock(TransformerBlock):
    """:class:`TransformerBlock` whose attentions record their weights (same parameters)."""

    record_weights: bool = True


__all__ = ["COLLECTION", "NAME", "RecordedAttention", "RecordedTransformerBlock", "attention_weights"]
