"""The per-kind checks of a manifest's modality columns (see :mod:`mmjax.data.builders.manifest_gen`).

Each check reads every row's value of one modality, fills the modality's ``shape`` or
``length`` and appends what it will change (resizing, resampling, cropping) to
``plan.notes``; a value that cannot be used is a one-line DataConfigError naming the row,
column and problem.
"""
from __future__ import annotations

import os
from typing import List, Optional, Tuple

from mmjax.data.builders import manifest_files as files
from mmjax.data.errors import DataConfigError


def file_of(plan, i: int, m) -> str:
    """The checked path of row ``i``'s file for modality ``m``: not empty, a known extension, existing."""
    value = plan.rows[i].get(m.column, "")
    where = plan.where(i, m.column)
    if not value:
        raise DataConfigError(f"{where}: empty value (a {m.kind} file path is needed)")
    if files.kind_of(value) != m.kind:
        ext = os.path.splitext(value)[1] or "(none)"
        raise DataConfigError(f"{where}: unknown extension {ext!r} for {m.kind} ({value}; {m.kind} files: "
                              f"{', '.join(files.EXTENSIONS[m.kind])})")
    path = plan.path(i, m)
    if not os.path.isfile(path):
        raise DataConfigError(f"{where}: file {path} does not exist")
    return path


def check_images(plan, m, size: Optional[Tuple[int, int]]) -> None:
    """Decodes every image; ``m.shape`` = (H, W, C) with (H, W) = ``size`` or the first image's,
    C = 1 when every image is grayscale, else 3."""
    sizes: List[Tuple[int, int]] = []
    gray = True
    for i in range(len(plan.rows)):
        img = files.open_image(file_of(plan, i, m), plan.where(i, m.column))
        sizes.append((img.height, img.width))
        gray = gray and img.mode in files.GRAY_MODES
    h, w = size or sizes[0]
    off = [i for i, s in enumerate(sizes) if s != (h, w)]
    if off:
        first = sizes[off[0]]
        plan.notes.append(f"{m.name}: {len(off)} of {len(sizes)} images are not {h}x{w} (first: row {off[0] + 1}, "
                          f"{first[0]}x{first[1]}); resized to {h}x{w} (bilinear)")
    m.shape = (int(h), int(w), 1 if gray else 3)


def check_audio(plan, mods, sample_rate: Optional[int], seconds: Optional[float]) -> None:
    """Reads every WAV header; ``plan.sample_rate`` = ``sample_rate`` or the first clip's rate, and
    each modality's ``length`` = ``seconds`` of samples or its longest clip (after resampling)."""
    headers = {m.name: [files.wav_header(file_of(plan, i, m), plan.where(i, m.column)) for i in range(len(plan.rows))]
               for m in mods}
    rate = int(sample_rate or headers[mods[0].name][0][0])
    for m in mods:
        clips = headers[m.name]
        other = [i for i, (r, _) in enumerate(clips) if r != rate]
        if other:
            plan.notes.append(f"{m.name}: {len(other)} of {len(clips)} clips are not at {rate} Hz (first: row "
                              f"{other[0] + 1}, {clips[other[0]][0]} Hz); resampled to {rate} Hz (windowed sinc)")
        lengths = [int(round(n * rate / r)) for r, n in clips]
        m.length = int(round(seconds * rate)) if seconds else max(lengths)
        if m.length <= 0:
            raise DataConfigError(f"{plan.manifest} column {m.column!r}: audio length {m.length} samples; "
                                  f"pass a positive --audio_seconds")
        longer = sum(n > m.length for n in lengths)
        if longer:
            plan.notes.append(f"{m.name}: {longer} of {len(clips)} clips are longer than {m.length / rate:g} s "
                              f"and are cropped to it")
    plan.sample_rate = rate


def check_text(plan, m, max_len: Optional[int], cap: int) -> None:
    """``m.length`` = ``max_len`` or the longest text's UTF-8 bytes + 2 (BOS, EOS), at most ``cap``."""
    sizes = [len(r.get(m.column, "").encode("utf-8")) for r in plan.rows]
    m.length = int(max_len or min(cap, max(sizes) + 2))
    cut = sum(n + 2 > m.length for n in sizes)
    if cut:
        plan.notes.append(f"{m.name}: {cut} of {len(sizes)} texts are longer than {m.length - 2} bytes; "
                          f"the tokenizer cuts them (--text_max_len)")
    empty = sum(n == 0 for n in sizes)
    if empty:
        plan.notes.append(f"{m.name}: {empty} empty texts (read as a missing modality, see data.bad_examples)")


def check_vectors(plan, m) -> None:
    """Loads every ``.npy``; all must be 1-D of one length D; ``m.shape`` = (D,)."""
    first = None
    for i in range(len(plan.rows)):
        where = plan.where(i, m.column)
        shape = files.read_vector(file_of(plan, i, m), where).shape
        if first is None:
            first = shape
        elif shape != first:
            raise DataConfigError(f"{where}: vector of shape {shape}, but row 1 has {first}")
    m.shape = tuple(int(d) for d in first)
