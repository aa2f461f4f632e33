"""Moved to :mod:`mmjax.metrics.caption`; this module re-exports it for existing imports."""
from mmjax.metrics.caption import (
    MAX_ORDER,
    CaptionMetricError,
    cider_d,
    corpus_bleu,
    tokenize_13a,
    tokenize_cider,
)

__all__ = ["MAX_ORDER", "CaptionMetricError", "cider_d", "corpus_bleu", "tokenize_13a", "tokenize_cider"]
