"""Logical axis names for weights and activations, and their default mesh rules.

Weights are annotated with logical names (``nn.with_logical_partitioning``);
``LOGICAL_RULES`` maps each logical name to a mesh axis ("data", "fsdp",
"tensor") or None (replicated). The same model then runs replicated, FSDP or
tensor-parallel by changing the rules or the mesh shape alone.
"""
from __future__ import annotations

from typing import Callable, Sequence, Tuple

import flax.linen as nn

# Logical names used across mmjax.
BATCH = "batch"
EMBED = "embed"          # model width of encoders / transformer blocks
MLP = "mlp"              # hidden width of feed-forward layers
HEADS = "heads"          # attention heads (q/k/v output, o input)
KV = "kv"                # per-head dim
VOCAB = "vocab"
FUSION_IN = "fusion_in"  # input side of fusion projections
FUSION_OUT = "fusion_out"  # output side of fusion projections
RANK = "rank"            # low-rank factors / bilinear factor dim
CONV_IN = "conv_in"
CONV_OUT = "conv_out"
CLASSES = "classes"
NORM = "norm"            # scale / bias of norms: always replicated
LENGTH = "length"

MESH_AXES = ("data", "fsdp", "tensor")

# Default: FSDP shards the large input dims, tensor parallel shards the wide
# output dims (Megatron-style column/row split for MLP and attention).
LOGICAL_RULES: Tuple[Tuple[str, object], ...] = (
    (BATCH, ("data", "fsdp")),
    (EMBED, "fsdp"),
    (FUSION_IN, "fsdp"),
    (CONV_IN, "fsdp"),
    (MLP, "tensor"),
    (HEADS, "tensor"),
    (FUSION_OUT, "tensor"),
    (RANK, None),
    (VOCAB, "tensor"),
    (CONV_OUT, "tensor"),
    (KV, None),
    (CLASSES, None),
    (NORM, None),
    (LENGTH, None),
)


def logical(init: Callable, axes: Sequence[str]) -> Callable:
    """Wraps an initializer so the created weight carries logical axis names."""
    return nn.with_logical_partitioning(init, tuple(axes))


LAYERS = "layers"  # the stacked-layer axis that nn.scan adds
LOGICAL_RULES = LOGICAL_RULES + ((LAYERS, None),)
