"""The video modality's fixed per-example corruption, in numpy (no tensorflow).

Clips are uint8 (N, F, H, W, C). :func:`corrupt_videos` draws from a
``np.random.Generator``-like object with a leading batch dimension (the pipeline
passes :class:`mmjax.data.draws.RowDraws` keyed by the example), so an example's
corruption does not depend on the batch it is read in.
"""
from __future__ import annotations

import numpy as np


def occluder_box(n: int, h: int, w: int, rng, occlusion: float) -> np.ndarray:
    """(n, h, w) bool: a square of side ``round(occlusion * side)`` at a uniformly random position
    per example (all False when the side is 0). Draws top then left, one integer each per row."""
    side_h, side_w = int(round(occlusion * h)), int(round(occlusion * w))
    top = rng.integers(0, h - side_h + 1, size=n)
    left = rng.integers(0, w - side_w + 1, size=n)
    rows = np.arange(h)[None, :, None]
    cols = np.arange(w)[None, None, :]
    return ((rows >= top[:, None, None]) & (rows < top[:, None, None] + side_h)
            & (cols >= left[:, None, None]) & (cols < left[:, None, None] + side_w))


def corrupt_videos(videos: np.ndarray, rng, occlusion: float, noise_std: float) -> np.ndarray:
    """uint8 clips (N, F, H, W, C) -> uint8 clips of the same shape.

    occlusion: side of a still square occluder of zeros, as a fraction of the frame side, at
      one random position per clip, the same in every frame (the digit moves behind it).
    noise_std: std of Gaussian noise added to every pixel of every frame, in [0, 1] units;
      values are rounded and clipped to 0..255.
    """
    n, _, h, w = videos.shape[:4]
    x = videos.astype(np.float32) / 255.0
    box = occluder_box(n, h, w, rng, occlusion)
    x = np.where(box[:, None, :, :, None], 0.0, x)
    if noise_std > 0:
        x = x + noise_std * rng.standard_normal(x.shape, dtype=np.float32)
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)
