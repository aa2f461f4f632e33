"""Bad examples: undecodable images, empty or silent audio, empty text.

A split is checked once, when it is decoded into columns (host numpy, cheap),
and the data config key ``bad_examples`` says what happens to what is found:

* ``"missing"`` (default): the example is kept with that modality marked
  missing (zero inputs, ``modality_mask`` False, as for modality dropout). An
  example left with no usable modality at all is skipped (counted under
  ``"no_modality_left"``), since it would be a label without inputs.
* ``"skip"``: the example is dropped from the split (the ``index`` column keeps
  the original positions of the examples that remain).
* ``"fatal"``: :class:`DataError` naming the split, example index, modality and
  reason of the first bad example (and how many there are).

Whatever the policy, counts per split and reason are kept in
:data:`REPORTS`, logged as one line when the split is loaded, and shown by
``dataset_info`` (for the splits loaded so far) and ``python -m experiments
data info``. Nothing bad passes silently as an ordinary example.

Reasons:
  undecodable_image: the stored image bytes failed to decode (``m__undecodable``).
  empty_audio: zero samples.
  silent_audio: max |x| over the real samples below :data:`SILENCE_THRESHOLD`
    (in [-1, 1] units, i.e. after dividing integer samples by ``scale``).
  empty_text: zero tokens (an empty string; BOS/EOS do not count).
"""
from __future__ import annotations

import logging
from typing import Dict, List, Tuple

import numpy as np

from mmjax.data.errors import DataConfigError, DataError

POLICIES = ("missing", "skip", "fatal")
REASONS = ("undecodable_image", "empty_audio", "silent_audio", "empty_text")
# Below one 16-bit LSB (1 / 32768 ~ 3e-5) times a few: a clip whose loudest sample
# is under this is digital silence or a muted recording, never usable speech.
SILENCE_THRESHOLD = 1e-4

log = logging.getLogger("mmjax.data")

# (dataset name, split) -> {reason: count, "examples": N before, "kept": N after, "policy": ...}
REPORTS: Dict[Tuple[str, str], Dict] = {}


def policy_of(cfg) -> str:
    p = cfg.get("bad_examples", "missing")
    if p not in POLICIES:
        raise DataConfigError(f"data config: bad_examples must be one of {POLICIES}, got {p!r}")
    return p


def find_bad(cfg, cols: Dict[str, np.ndarray]) -> Dict[str, Dict[str, np.ndarray]]:
    """modality -> reason -> (N,) bool of bad examples, from undecoded-by-policy columns.

    Audio is judged on the stored samples (integers divided by the modality's ``scale``),
    before any fixed noise is added.
    """
    out: Dict[str, Dict[str, np.ndarray]] = {}
    for m, mc in sorted(cfg.modalities.items()):
        found = {}
        if mc.kind == "image":
            und = cols.get(m + "__undecodable")
            if und is not None:
                found["undecodable_image"] = np.asarray(und, bool)
        elif mc.kind == "audio":
            x, lengths = cols[m], np.asarray(cols[m + "__length"])
            scale = float(mc.get("scale", 1.0)) if np.issubdtype(x.dtype, np.integer) else 1.0
            valid = np.arange(x.shape[1])[None, :] < lengths[:, None]
            peak = np.where(valid, np.abs(x.astype(np.float32)), 0.0).max(1) / np.float32(scale) if x.shape[1] else np.zeros(len(x), np.float32)
            found["empty_audio"] = lengths == 0
            found["silent_audio"] = (lengths > 0) & (peak < SILENCE_THRESHOLD)
        elif mc.kind == "text":
            found["empty_text"] = np.asarray(cols[m + "__length"]) == 0
        found = {r: b for r, b in found.items() if b.any()}
        if found:
            out[m] = found
    return out


def _summary(name: str, split: str, report: Dict) -> str:
    counts = ", ".join(f"{r} {report[r]}" for r in (*REASONS, "no_modality_left") if report.get(r))
    if not counts:
        return f"{name} {split}: {report['examples']} examples, no bad examples"
    return (
        f"{name} {split}: bad examples ({counts}) of {report['examples']}; "
        f"bad_examples={report['policy']!r} -> {report['kept']} examples kept"
    )


def apply(cfg, split: str, cols: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Checks a split's columns and applies ``cfg.bad_examples``; returns the new columns.

    Under "missing" a bad modality gets zero data, length 0 (text/audio) or
    ``m__present`` False (images). Records and logs the split's report.
    """
    policy = policy_of(cfg)
    bad = find_bad(cfg, cols)
    n = len(cols["index"])
    report: Dict = {"examples": n, "policy": policy}
    for m, found in bad.items():
        for r, b in found.items():
            report[r] = report.get(r, 0) + int(b.sum())
    if bad and policy == "fatal":
        first = None
        for m, found in bad.items():
            for r, b in found.items():
                i = int(np.argmax(b))
                if first is None or i < first[0]:
                    first = (i, m, r)
        i, m, r = first
        total = int(np.any([b for f in bad.values() for b in f.values()], axis=0).sum())
        raise DataError(
            f"{cfg.name} split {split!r}: example {int(cols['index'][i])} has {r.replace('_', ' ')} "
            f"(modality {m!r}); {total} bad example(s) in the split; "
            f"set data config bad_examples='skip' or 'missing' to go on without them"
        )
    cols = dict(cols)
    if bad:
        any_bad = np.zeros(n, bool)
        for found in bad.values():
            for b in found.values():
                any_bad |= b
        if policy == "skip":
            keep = ~any_bad
        else:
            usable = np.ones((n, len(cfg.modalities)), bool)
            for j, m in enumerate(sorted(cfg.modalities)):
                mbad = np.zeros(n, bool)
                for b in bad.get(m, {}).values():
                    mbad |= b
                usable[:, j] = ~mbad
                if not mbad.any():
                    continue
                mc = cfg.modalities[m]
                cols[m] = np.where(mbad.reshape((-1,) + (1,) * (cols[m].ndim - 1)), 0, cols[m]).astype(cols[m].dtype)
                if mc.kind == "image":
                    cols[m + "__present"] = ~mbad
                else:
                    cols[m + "__length"] = np.where(mbad, 0, cols[m + "__length"]).astype(np.int32)
            keep = usable.any(1)
            if (~keep).any():
                report["no_modality_left"] = int((~keep).sum())
        if not keep.all():
            cols = {k: v[keep] for k, v in cols.items()}
    report["kept"] = len(cols["index"])
    REPORTS[(cfg.name, split)] = report
    line = _summary(cfg.name, split, report)
    (log.warning if bad else log.info)(line)
    return cols


def reports_for(name: str) -> Dict[str, Dict]:
    """split -> report of the splits of dataset ``name`` loaded in this process."""
    return {s: dict(r) for (n, s), r in REPORTS.items() if n == name}


def summary_line(name: str, split: str) -> str:
    """The one-line summary of a loaded split ("" if it was not loaded)."""
    r = REPORTS.get((name, split))
    return _summary(name, split, r) if r else ""
