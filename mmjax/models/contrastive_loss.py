"""Moved to :mod:`mmjax.losses.contrastive`; this module re-exports it for existing imports."""
from mmjax.losses.contrastive import *  # noqa: F401,F403
from mmjax.losses.contrastive import __all__  # noqa: F401
