"""Image normalisation, done where the batch lands (on device in training).

The pipeline hands images over as uint8 (4x fewer bytes to move to the device
than float32); :func:`normalize_images` turns them into the float32
``(x / 255 - mean) / std`` the encoders see, with missing rows
(``modality_mask`` False) exactly zero. It works on numpy arrays on the host
and on jax arrays inside a jitted function alike.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Sequence, Tuple

import numpy as np

Norms = Dict[str, Tuple[Tuple[float, ...], Tuple[float, ...]]]


def image_norms(data_config) -> Norms:
    """modality -> (mean, std) per channel in [0, 1] units, for the image and video modalities of a data config."""
    mods = data_config.get("modalities") or {}
    return {m: (tuple(float(v) for v in mc["mean"]), tuple(float(v) for v in mc["std"]))
            for m, mc in sorted(mods.items()) if mc.get("kind") in ("image", "video")}


def normalize_images(batch: Mapping[str, Any], norms: Mapping[str, Tuple[Sequence[float], Sequence[float]]],
                     xp: Any = np) -> Dict[str, Any]:
    """A copy of ``batch`` whose uint8 images (B, H, W, C) and clips (B, F, H, W, C) are float32 of the same
    shape (mean and std per channel, the last axis); ``xp`` is numpy or jax.numpy.

    Images already in a float dtype pass unchanged, so normalising twice is harmless.
    """
    inputs = dict(batch["inputs"])
    present = batch.get("modality_mask") or {}
    for m, (mean, std) in norms.items():
        x = inputs.get(m)
        if x is None or x.dtype != np.uint8:
            continue
        y = (x.astype(xp.float32) / 255.0 - xp.asarray(mean, xp.float32)) / xp.asarray(std, xp.float32)
        if m in present:
            y = xp.where(xp.reshape(present[m], (-1,) + (1,) * (y.ndim - 1)), y, 0.0)
        inputs[m] = y.astype(xp.float32)
    return {**batch, "inputs": inputs}
