"""Layers shared by encoders, fusion blocks and decoders."""
from mmjax.layers.dense import dense
from mmjax.layers.transformer import (
    MlpBlock,
    MultiHeadAttention,
    TransformerBlock,
    TransformerStack,
)

__all__ = ["dense", "MlpBlock", "MultiHeadAttention", "TransformerBlock", "TransformerStack"]
