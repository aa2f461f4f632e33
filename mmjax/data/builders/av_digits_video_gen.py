"""The av_digits_video recipe in plain numpy (no tensorflow): av_digits' examples as moving clips.

Every example is an av_digits example (:func:`mmjax.data.builders.av_digits_gen.plan`
with the same seed: the same MNIST image, split, speaker, rate and pitch, hence the
same spoken-digit audio and no image or clip shared between splits) whose image is
shown moving through a larger frame, as in Moving MNIST (Srivastava et al. 2015).

Motion (integer pixels, one digit per clip): with ``L = frame_size - 28`` the
digit's top-left corner starts at ``start = (y0, x0)``, each drawn uniformly from
``0..L``, and moves by ``velocity = (vy, vx)`` per frame, each drawn uniformly from
``{-3, -2, -1, 1, 2, 3}``. A coordinate that would leave ``[0, L]`` is reflected
back into it and its velocity component changes sign (a bounce at the border), so
the digit is always wholly inside the frame. In closed form, frame ``t`` has the
corner at ``fold(start + velocity * t)`` with ``fold(q) = r if r <= L else 2L - r``,
``r = q mod 2L``. The frame is black (0) outside the digit's 28x28 box.

Draws per example come from ``default_rng([seed, 10 + k, id])`` (``k`` the split's
position in SPLITS), so every clip is a pure function of (config, seed).
"""
from __future__ import annotations

from typing import Iterator, Sequence, Tuple

import numpy as np

from mmjax.data.builders import av_digits_gen as avd
from mmjax.data.errors import DataConfigError

DIGIT = 28  # side of an MNIST digit
SPEEDS = (-3, -2, -1, 1, 2, 3)  # pixels per frame, per axis
NUM_FRAMES = 12
FRAME_SIZE = 48


def check_geometry(num_frames: int, frame_size: int) -> None:
    if num_frames < 2:
        raise DataConfigError(f"av_digits_video: num_frames must be >= 2, got {num_frames}")
    if frame_size < DIGIT + 4:
        raise DataConfigError(f"av_digits_video: frame_size must be >= {DIGIT + 4}, got {frame_size}")


def draw_motion(seed: int, split: str, example_id: int, frame_size: int) -> Tuple[np.ndarray, np.ndarray]:
    """-> start (2,) int32 in [0, L], velocity (2,) int32 with components in SPEEDS."""
    rng = np.random.default_rng([seed, 10 + avd.SPLITS.index(split), example_id])
    limit = frame_size - DIGIT
    start = rng.integers(0, limit + 1, size=2)
    velocity = np.asarray(SPEEDS)[rng.integers(0, len(SPEEDS), size=2)]
    return start.astype(np.int32), velocity.astype(np.int32)


def positions(start: np.ndarray, velocity: np.ndarray, num_frames: int, frame_size: int) -> np.ndarray:
    """Top-left corners (num_frames, 2) int32, frame by frame with bounces at the borders."""
    limit = frame_size - DIGIT
    p, v = np.array(start, np.int64), np.array(velocity, np.int64)
    out = np.zeros((num_frames, 2), np.int32)
    for t in range(num_frames):
        out[t] = p
        p = p + v
        for a in range(2):
            if p[a] < 0:
                p[a], v[a] = -p[a], -v[a]
            elif p[a] > limit:
                p[a], v[a] = 2 * limit - p[a], -v[a]
    return out


def render(digit: np.ndarray, start: np.ndarray, velocity: np.ndarray, num_frames: int,
           frame_size: int) -> np.ndarray:
    """digit (28, 28) uint8 -> clip (num_frames, frame_size, frame_size, 1) uint8."""
    clip = np.zeros((num_frames, frame_size, frame_size, 1), np.uint8)
    for t, (y, x) in enumerate(positions(start, velocity, num_frames, frame_size)):
        clip[t, y : y + DIGIT, x : x + DIGIT, 0] = digit
    return clip


def example_hash_update(h, video: np.ndarray, audio: np.ndarray, label: int) -> None:
    """Feeds one example into a split's running sha256 (the split's content hash)."""
    h.update(np.ascontiguousarray(video, np.uint8).tobytes())
    h.update(np.int64(audio.size).tobytes())
    h.update(np.ascontiguousarray(audio, np.int16).tobytes())
    h.update(np.int64(label).tobytes())


def generate(split: str, examples: Sequence[avd.Example], images: np.ndarray, clips: avd.ClipCache, *,
             seed: int, num_frames: int = NUM_FRAMES, frame_size: int = FRAME_SIZE) -> Iterator[Tuple[int, dict]]:
    """Yields (key, feature dict) in id order, the order the split is stored and hashed in."""
    check_geometry(num_frames, frame_size)
    for ex in examples:
        start, velocity = draw_motion(seed, split, ex.id, frame_size)
        yield ex.id, {
            "id": ex.id,
            "video": render(images[ex.image_id], start, velocity, num_frames, frame_size),
            "audio": clips.get(ex.label, ex.speaker, ex.rate, ex.pitch),
            "label": ex.label,
            "image_id": ex.image_id,
            "start": start,
            "velocity": velocity,
            "speaker": ex.speaker,
            "rate": ex.rate,
            "pitch": ex.pitch,
        }
