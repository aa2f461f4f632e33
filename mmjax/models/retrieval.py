"""Moved to :mod:`mmjax.metrics.retrieval`; this module re-exports it for existing imports."""
from mmjax.metrics.retrieval import *  # noqa: F401,F403
from mmjax.metrics.retrieval import __all__, _probe_loss  # noqa: F401  (tests take _probe_loss's gradient here)
