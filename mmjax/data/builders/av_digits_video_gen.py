"""The av_digits_video recipe in plain numpy (no tensorflow): av_digits' examples as moving clips.

Every example is an av_digits example (:func:`mmjax.data.builders.av_digits_gen.plan`
with the same seed: the same MNIST image, split, speaker, rate and pitch, hence the
same spoken-digit audio and no image or clip shared between splits) whose image is
shown moving through a larger frame, as in Moving MNIST (Srivastava et al. 2015).

Geometry (defaults): 10 frames of 32x32 holding the digit at 14x14: Moving MNIST's
64x64 frames with 28x28 digits at half scale (cheap enough for a CPU). The digit is
the 28x28 image averaged over k x k blocks, k = 28 // digit_size, rounded half up
(``(sum + k*k // 2) // (k*k)``; k = 1 keeps it as it is).

Motion (integer pixels, one digit per clip): with ``L = frame_size - digit_size`` the
digit's top-left corner starts at ``start = (y0, x0)``, each drawn uniformly from
``0..L``, and moves by ``velocity = (vy, vx)`` per frame, each drawn uniformly from
``{-3, -2, -1, 1, 2, 3}``. A coordinate that would leave ``[0, L]`` is reflected
back into it and its velocity component changes sign (a bounce at the border), so
the digit is always wholly inside the frame. In closed form, frame ``t`` has the
corner at ``fold(start + velocity * t)`` with ``fold(q) = r if r <= L else 2L - r``,
``r = q mod 2L``. The frame is black (0) outside the digit's box.

Draws per example come from ``default_rng([seed, 10 + k, id])`` (``k`` the split's
position in SPLITS), so every clip is a pure function of (config, seed).
"""
from __future__ import annotations

from typing import Iterator, Sequence, Tuple

import numpy as np

from mmjax.data.builders import av_digits_gen as avd
from mmjax.data.errors import DataConfigError

MNIST_SIDE = 28
SPEEDS = (-3, -2, -1, 1, 2, 3)  # pixels per frame, per axis
NUM_FRAMES = 10
FRAME_SIZE = 32
DIGIT_SIZE = 14


def check_geometry(num_frames: int, frame_size: int, digit_size: int) -> None:
    if num_frames < 2:
        raise DataConfigError(f"av_digits_video: num_frames must be >= 2, got {num_frames}")
    if digit_size < 1 or MNIST_SIDE % digit_size:
        raise DataConfigError(f"av_digits_video: digit_size must divide {MNIST_SIDE}, got {digit_size}")
    if frame_size < digit_size + 4:
        raise DataConfigError(f"av_digits_video: frame_size must be >= digit_size + 4 = {digit_size + 4}, "
                              f"got {frame_size}")


def shrink(image: np.ndarray, digit_size: int) -> np.ndarray:
    """(28, 28) uint8 -> (digit_size, digit_size) uint8: k x k block means rounded half up, k = 28 // digit_size."""
    k = MNIST_SIDE // digit_size
    blocks = image.astype(np.int64).reshape(digit_size, k, digit_size, k).sum((1, 3))
    return ((blocks + (k * k) // 2) // (k * k)).astype(np.uint8)


def draw_motion(seed: int, split: str, example_id: int, limit: int) -> Tuple[np.ndarray, np.ndarray]:
    """-> start (2,) int32 in [0, limit], velocity (2,) int32 with components in SPEEDS."""
    rng = np.random.default_rng([seed, 10 + avd.SPLITS.index(split), example_id])
    start = rng.integers(0, limit + 1, size=2)
    velocity = np.asarray(SPEEDS)[rng.integers(0, len(SPEEDS), size=2)]
    return start.astype(np.int32), velocity.astype(np.int32)


def positions(start: np.ndarray, velocity: np.ndarray, num_frames: int, limit: int) -> np.ndarray:
    """Top-left corners (num_frames, 2) int32 in [0, limit], frame by frame with bounces at the borders."""
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
    """digit (d, d) uint8 -> clip (num_frames, frame_size, frame_size, 1) uint8."""
    d = digit.shape[0]
    clip = np.zeros((num_frames, frame_size, frame_size, 1), np.uint8)
    for t, (y, x) in enumerate(positions(start, velocity, num_frames, frame_size - d)):
        clip[t, y : y + d, x : x + d, 0] = digit
    return clip


def example_hash_update(h, video: np.ndarray, audio: np.ndarray, label: int) -> None:
    """Feeds one example into a split's running sha256 (the split's content hash)."""
    h.update(np.ascontiguousarray(video, np.uint8).tobytes())
    h.update(np.int64(audio.size).tobytes())
    h.update(np.ascontiguousarray(audio, np.int16).tobytes())
    h.update(np.int64(label).tobytes())


def generate(split: str, examples: Sequence[avd.Example], images: np.ndarray, clips: avd.ClipCache, *,
             seed: int, num_frames: int = NUM_FRAMES, frame_size: int = FRAME_SIZE,
             digit_size: int = DIGIT_SIZE) -> Iterator[Tuple[int, dict]]:
    """Yields (key, feature dict) in id order, the order the split is stored and hashed in."""
    check_geometry(num_frames, frame_size, digit_size)
    for ex in examples:
        start, velocity = draw_motion(seed, split, ex.id, frame_size - digit_size)
        digit = shrink(images[ex.image_id], digit_size)
        yield ex.id, {
            "id": ex.id,
            "video": render(digit, start, velocity, num_frames, frame_size),
            "audio": clips.get(ex.label, ex.speaker, ex.rate, ex.pitch),
            "label": ex.label,
            "image_id": ex.image_id,
            "start": start,
            "velocity": velocity,
            "speaker": ex.speaker,
            "rate": ex.rate,
            "pitch": ex.pitch,
        }
