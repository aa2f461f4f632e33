"""Fusion blocks: combine per-modality features into one representation.

Every block is a ``flax.linen.Module`` called as
``block(features, modality_mask=None, *, train=False) -> (B, out_dim)``;
see :mod:`mmjax.fusion.base` for the input contract.

>>> block = mmjax.fusion.create("low_rank", out_dim=64, rank=4)
>>> params = block.init(rng, {"image": img_feats, "audio": audio_feats})
"""
from typing import Any, List

from mmjax.fusion.base import FusionInputError, FusionInputs, masked_mean, prepare, with_pooled_token
from mmjax.fusion.cost import Cost, cost
from mmjax.fusion.registry import FUSION

# Each import registers its blocks (and their cost models).
from mmjax.fusion import concat, pooling, gating, tensor, bilinear, attention, late  # noqa: E402,F401
from mmjax.fusion import bilinear_family, compact_bilinear  # noqa: E402,F401
from mmjax.fusion import torchmm, multibench, transformer_fusion  # noqa: E402,F401


def create(name: str, **config: Any):
    """Builds the fusion block registered as ``name`` with ``config``."""
    return FUSION.create(name, **config)


def names() -> List[str]:
    """Names of all registered fusion blocks."""
    return FUSION.names()


__all__ = ["Cost", "FusionInputError", "FusionInputs", "cost", "create", "masked_mean", "names", "prepare",
           "with_pooled_token"]
