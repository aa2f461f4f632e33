"""Types shared by encoders, fusion blocks and models."""
from __future__ import annotations

from typing import Mapping, Optional, Union

import flax.struct
import jax

Array = jax.Array


@flax.struct.dataclass
class Encoded:
    """What every encoder returns, so any fusion block can consume it.

    Attributes:
      pooled: (B, D) one vector per example.
      tokens: (B, T, D) token features (T=1 for encoders without a sequence).
      mask:   (B, T) bool, True where a token is real (not padding).
    """

    pooled: Array
    tokens: Array
    mask: Array


Features = Mapping[str, Union[Array, Encoded]]
ModalityMask = Optional[Mapping[str, Array]]
