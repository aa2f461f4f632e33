"""A tiny config for every registered fusion block, and the tiny classifier config around one.

Sized for seconds-long runs on synthetic data (:mod:`mmjax.data.toy_task`,
:func:`mmjax.train.full_batch.fit_full_batch`): the fusion learning test trains
every registered block with these, so every block must have an entry.

>>> model_config = tiny_classifier_config("low_rank", ("a", "b"))
"""
from __future__ import annotations

from typing import Any, Dict, Sequence

from mmjax import errors

ENCODER_DIM = 16
FUSION_DIM = 16

# A small config for every fusion block. Every registered block must have an
# entry: the learning test fails on a block without one.
TINY_CONFIGS: Dict[str, Dict[str, Any]] = {
    "concat": {"out_dim": FUSION_DIM},
    "sum": {"out_dim": FUSION_DIM},
    "weighted": {"out_dim": FUSION_DIM},
    "gated": {"out_dim": FUSION_DIM},
    "film": {"out_dim": FUSION_DIM},
    "tensor": {"out_dim": FUSION_DIM},
    "low_rank": {"out_dim": FUSION_DIM},
    "bilinear": {"out_dim": FUSION_DIM},
    "late": {},  # out_dim = number of classes, filled in by fusion_choice.resolve
    "cross_attention": {"out_dim": FUSION_DIM, "dim": 8, "num_heads": 2, "num_layers": 1, "mlp_dim": 16},
    "bottleneck": {
        "out_dim": FUSION_DIM, "dim": 8, "num_heads": 2, "num_layers": 1, "fusion_layer": 0,
        "num_bottlenecks": 2, "mlp_dim": 16,
    },
    "perceiver": {
        "out_dim": FUSION_DIM, "dim": 8, "num_heads": 2, "num_layers": 1, "num_latents": 4,
        "num_self_layers": 1, "mlp_dim": 16,
    },
    # The block.bootstrap / MMF bilinear family (published sizes are 1200-16000 wide).
    "mcb": {"out_dim": FUSION_DIM, "mm_dim": 256},
    "mlb": {"out_dim": FUSION_DIM, "mm_dim": 32},
    "mfh": {"out_dim": FUSION_DIM, "mm_dim": 16, "factor": 2},
    "mutan": {"out_dim": FUSION_DIM, "mm_dim": 16, "rank": 4},
    "block": {"out_dim": FUSION_DIM, "mm_dim": 32, "chunks": 4, "rank": 4},
    "linear_sum": {"out_dim": FUSION_DIM, "mm_dim": 32},
    "concat_mlp": {"out_dim": FUSION_DIM, "dimensions": (32,)},
    # TorchMultimodal and MultiBench (issue 20, catalogue A).
    "attention_fusion": {"out_dim": FUSION_DIM},
    "deepset": {"out_dim": FUSION_DIM, "hidden_dims": (FUSION_DIM,)},
    "deepset_transformer": {"out_dim": FUSION_DIM, "proj_dim": 8, "num_heads": 2, "mlp_dim": 16,
                            "hidden_dims": (FUSION_DIM,)},
    "multiplicative": {"out_dim": FUSION_DIM},
    "nl_gate": {"out_dim": FUSION_DIM},
    "stack": {"out_dim": FUSION_DIM, "inputs": "pooled"},  # the toy sequences are not aligned (3 vs 2 tokens)
    "early_transformer": {"out_dim": FUSION_DIM, "dim": 8, "num_heads": 2, "num_layers": 1, "mlp_dim": 16},
    "late_transformer": {"out_dim": FUSION_DIM, "dim": 8, "num_heads": 2, "num_layers": 1, "mlp_dim": 16},
}


class MissingTinyConfigError(errors.ConfigError, KeyError):
    """A fusion block without an entry in :data:`TINY_CONFIGS`."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def tiny_config(block: str) -> Dict[str, Any]:
    """The tiny ``fusion_config`` of fusion block ``block`` (a copy)."""
    if block not in TINY_CONFIGS:
        raise MissingTinyConfigError(f"fusion block {block!r} has no entry in TINY_CONFIGS in {__file__}; add one")
    return dict(TINY_CONFIGS[block])


def tiny_classifier_config(block: str, modalities: Sequence[str]) -> Dict[str, Any]:
    """A classifier ``config.model``: an MLP encoder (ENCODER_DIM, ENCODER_DIM) per modality, ``block``
    with its tiny config, and the classifier's linear head (``fusion="late"``: the block's logits)."""
    return {
        "encoders": {m: {"name": "mlp", "features": (ENCODER_DIM, ENCODER_DIM)} for m in modalities},
        "fusion": block,
        "fusion_config": tiny_config(block),
    }
