"""Encoders: turn one modality's raw input into :class:`mmjax.types.Encoded`.

Every encoder is a ``flax.linen.Module`` called as
``encoder(inputs, mask=None, *, train=False) -> Encoded(pooled (B, D), tokens (B, T, D), mask (B, T))``
where ``mask`` is an optional (B, L) bool padding mask over the input sequence
(text tokens, audio samples, video frames), True where the input is real.

>>> enc = mmjax.encoders.create("mlp", features=(256, 128))
"""
from typing import Any, List

from mmjax.encoders.registry import ENCODERS

# Each import registers its encoders.
from mmjax.encoders import vector, image, text, audio, video, video_frames, pretrained  # noqa: E402,F401


def create(name: str, **config: Any):
    """Builds the encoder registered as ``name`` with ``config``."""
    return ENCODERS.create(name, **config)


def names() -> List[str]:
    """Names of all registered encoders."""
    return ENCODERS.names()


__all__ = ["create", "names"]
