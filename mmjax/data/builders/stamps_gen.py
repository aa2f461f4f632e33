"""Parsing the Tux Paint stamps tree (no tensorflow): clip art, descriptions, recordings.

Debian's ``tuxpaint-stamps-default`` (GPL-2) installs ``/usr/share/tuxpaint/stamps/``:

    <category>/<sub>/[<more>/]<stem>.png        clip art (RGBA; some stamps are .svg only)
    <stem>.txt                                  first line: English description,
                                                then "<lang>.utf8=<description>" lines
    <stem>_desc_<lang>.ogg, <stem>_desc.ogg     a person reading the description
                                                (<lang>; the second is English)
    <stem>.ogg                                  a sound effect
    <stem>.dat                                  drawing flags (ignored)

One example per PNG stamp with a description. Labels: the 16 top-level
categories and the "category/sub" fine label. Stamps that are SVG only are
skipped (rendering SVG needs a library we do not depend on).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Dict, List, Optional

import numpy as np

from mmjax.data.errors import DataConfigError

DEFAULT_ROOT = "/usr/share/tuxpaint/stamps"
CATEGORIES = (
    "animals", "clothes", "food", "hobbies", "household", "medical", "military", "naturalforces",
    "people", "plants", "seasonal", "space", "sports", "symbols", "town", "vehicles",
)
SAMPLE_RATE = 8000
SPEECH_SAMPLES = 4 * SAMPLE_RATE
SOUND_SAMPLES = 2 * SAMPLE_RATE
IMAGE_SIZE = 64
TEST_FRACTION = 0.2


@dataclasses.dataclass(frozen=True)
class Stamp:
    stem: str  # path relative to the root, without extension
    category: str
    fine: str  # "category/sub"
    image: str
    description: str
    speech: Optional[str]
    sound: Optional[str]

    @property
    def split(self) -> str:
        """A stable split from the stem's hash, so adding stamps does not move others."""
        h = int(hashlib.sha1(self.stem.encode()).hexdigest()[:8], 16) / 16**8
        return "test" if h < TEST_FRACTION else "train"


def missing_message(root: str) -> str:
    return (
        f"no Tux Paint stamps at {root}. Install them (Debian/Ubuntu, ~160 MB download): "
        "apt-get install tuxpaint-stamps-default, or set the builder's stamps root."
    )


def parse_description(text: str, language: str) -> str:
    """The description in ``language`` from a stamp's .txt ("en": the first line)."""
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    if not lines:
        return ""
    if language == "en":
        return lines[0]
    for l in lines[1:]:
        key, _, value = l.partition("=")
        if key.strip() in (f"{language}.utf8", f"{language}_{language.upper()}.utf8"):
            return value.strip()
    return ""


def scan(root: str, language: str = "fr") -> List[Stamp]:
    """All PNG stamps with a description in ``language``, sorted by stem."""
    if not os.path.isdir(root):
        raise DataConfigError(missing_message(root))
    stamps = []
    for dirpath, _, files in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        parts = [] if rel == "." else rel.split(os.sep)
        if not parts or parts[0] not in CATEGORIES:
            continue
        names = set(files)
        for f in files:
            if not f.endswith(".png"):
                continue
            stem = f[:-4]
            if stem + ".txt" not in names:
                continue
            with open(os.path.join(dirpath, stem + ".txt"), encoding="utf-8", errors="replace") as fh:
                desc = parse_description(fh.read(), language)
            if not desc:
                continue
            speech_name = f"{stem}_desc.ogg" if language == "en" else f"{stem}_desc_{language}.ogg"
            stamps.append(
                Stamp(
                    stem="/".join(parts + [stem]),
                    category=parts[0],
                    fine="/".join(parts[:2]) if len(parts) > 1 else parts[0],
                    image=os.path.join(dirpath, f),
                    description=desc,
                    speech=os.path.join(dirpath, speech_name) if speech_name in names else None,
                    sound=os.path.join(dirpath, stem + ".ogg") if stem + ".ogg" in names else None,
                )
            )
    if not stamps:
        raise DataConfigError(f"no PNG stamps with {language!r} descriptions under {root}")
    return sorted(stamps, key=lambda s: s.stem)


def load_image(path: str, size: int = IMAGE_SIZE) -> np.ndarray:
    """RGBA clip art -> (size, size, 3) uint8 on white, aspect kept, centred."""
    from PIL import Image

    im = Image.open(path).convert("RGBA")
    scale = size / max(im.size)
    im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.LANCZOS)
    canvas = Image.new("RGBA", (size, size), (255, 255, 255, 255))
    canvas.alpha_composite(im, ((size - im.width) // 2, (size - im.height) // 2))
    return np.asarray(canvas.convert("RGB"), np.uint8)


def load_audio(path: Optional[str], max_samples: int) -> np.ndarray:
    """An audio file -> mono int16 (N,) at 8 kHz, N <= max_samples; empty if no file."""
    if path is None:
        return np.zeros((0,), np.int16)
    import soundfile as sf

    from mmjax.data.speech import resample

    wave, rate = sf.read(path, dtype="float32", always_2d=True)
    wave = wave.mean(1)
    if rate != SAMPLE_RATE:
        wave = resample(wave, rate, SAMPLE_RATE)
    return np.round(np.clip(wave[:max_samples], -1, 1) * 32767).astype(np.int16)


def fine_names(stamps: List[Stamp]) -> List[str]:
    return sorted({s.fine for s in stamps})


def example(stamp: Stamp, index: int) -> Dict:
    return {
        "id": index,
        "stem": stamp.stem,
        "image": load_image(stamp.image),
        "description": stamp.description,
        "speech": load_audio(stamp.speech, SPEECH_SAMPLES),
        "sound": load_audio(stamp.sound, SOUND_SAMPLES),
        "label": stamp.category,
        "fine_label": stamp.fine,
    }
