"""Bad examples: undecodable images, empty or silent audio, empty text.

Each batch's rows are checked when they are read (host numpy, cheap), and the
data config key ``bad_examples`` says what happens to what is found:

* ``"missing"`` (default): the example is kept with that modality marked
  missing (zero inputs, ``modality_mask`` False, as for modality dropout). An
  example left with no usable modality at all is dropped (counted under
  ``"no_modality_left"``), since it would be a label without inputs.
* ``"skip"``: the example is dropped.
* ``"fatal"``: :class:`DataError` naming the split, example index, modality and
  reason of the first bad example read.

A dropped example keeps its row, with weight 0 (train) or ``valid`` False
(eval): every other example stays where the data order puts it, whatever the
number of processes, and nothing is read twice to fill the gap.

Whatever the policy, the distinct bad examples this process has read are
counted per split and reason in :data:`REPORTS`, logged when first met, and
shown by ``dataset_info`` and ``python -m experiments data info`` (which reads
whole splits). Nothing bad passes silently as an ordinary example.

Reasons:
  undecodable_image: the stored image bytes failed to decode (``m__undecodable``).
  empty_audio: zero samples.
  silent_audio: max |x| over the real samples below :data:`SILENCE_THRESHOLD`
    (in [-1, 1] units, i.e. after dividing integer samples by ``scale``).
  empty_text: zero tokens (an empty string; BOS/EOS do not count).
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Dict, Tuple

import numpy as np

from mmjax.data.errors import DataConfigError, DataError

POLICIES = ("missing", "skip", "fatal")
REASONS = ("undecodable_image", "empty_audio", "silent_audio", "empty_text")
# Below one 16-bit LSB (1 / 32768 ~ 3e-5) times a few: a clip whose loudest sample
# is under this is digital silence or a muted recording, never usable speech.
SILENCE_THRESHOLD = 1e-4

log = logging.getLogger("mmjax.data")

# (dataset name, split) -> {reason: count, "examples": N read, "kept": N not dropped, "policy": ...}
REPORTS: Dict[Tuple[str, str], Dict] = {}
# The example indices behind REPORTS: a bitmap of the examples read (1 byte per example of the
# split, updated in O(batch) per step) and sets of the bad ones only (few).
_SEEN: Dict[Tuple[str, str], Dict[str, Any]] = {}
_LOCK = threading.Lock()  # batches are read by several threads


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
            valid = np.minimum(lengths, x.shape[1])
            peak = np.array([np.abs(row[:k].astype(np.float32)).max() if k > 0 else 0.0 for row, k in zip(x, valid)],
                            np.float32) / np.float32(scale)
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


def apply(cfg, split: str, cols: Dict[str, np.ndarray]) -> Tuple[Dict[str, np.ndarray], np.ndarray]:
    """Checks a batch's rows and applies ``cfg.bad_examples`` -> (columns, keep (N,) bool).

    Under "missing" a bad modality gets zero data, length 0 (text/audio) or
    ``m__present`` False (images). ``keep`` is False for dropped examples. Adds the
    rows' distinct bad examples to the split's report (``index`` identifies them).
    """
    policy = policy_of(cfg)
    bad = find_bad(cfg, cols)
    n = len(cols["index"])
    keep = np.ones(n, bool)
    if bad and policy == "fatal":
        _record(cfg.name, split, policy, cols["index"], bad, ~keep)
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
            f"(modality {m!r}); {total} bad example(s) among the {n} just read; "
            f"set data config bad_examples='skip' or 'missing' to go on without them"
        )
    cols = dict(cols)
    if bad:
        mbad = {m: np.any([b for b in bad.get(m, {}).values()] or [np.zeros(n, bool)], axis=0)
                for m in sorted(cfg.modalities)}
        if policy == "skip":
            keep = ~np.any(list(mbad.values()), axis=0)
        else:
            keep = ~np.all(list(mbad.values()), axis=0)  # nothing usable left: dropped
            for m, b in mbad.items():
                if not b.any():
                    continue
                cols[m] = np.where(b.reshape((-1,) + (1,) * (cols[m].ndim - 1)), 0, cols[m]).astype(cols[m].dtype)
                if cfg.modalities[m].kind == "image":
                    cols[m + "__present"] = ~b
                else:
                    cols[m + "__length"] = np.where(b, 0, cols[m + "__length"]).astype(np.int32)
                    if m + "__mask" in cols:  # as zero byte ids give: no real token
                        cols[m + "__mask"] = cols[m + "__mask"] & ~b[:, None]
    _record(cfg.name, split, policy, cols["index"], bad, ~keep)
    return cols, keep


def _record(name: str, split: str, policy: str, index: np.ndarray, bad, dropped: np.ndarray) -> None:
    """Adds these rows to the split's report: distinct examples read, distinct bad ones per reason."""
    index = np.asarray(index)
    new_reasons = []
    with _LOCK:
        seen = _SEEN.setdefault((name, split), {"read": np.zeros(0, bool), "count": 0, "dropped": set()})
        if index.size and int(index.max()) >= seen["read"].size:
            grown = np.zeros(max(int(index.max()) + 1, 2 * seen["read"].size), bool)
            grown[: seen["read"].size] = seen["read"]
            seen["read"] = grown
        seen["count"] += int(np.unique(index[~seen["read"][index]]).size)
        seen["read"][index] = True
        seen["dropped"].update(index[dropped].tolist())
        for found in bad.values():
            for r, b in found.items():
                ids = seen.setdefault(r, set())
                if not ids and b.any():
                    new_reasons.append((r, int(index[b][0])))
                ids.update(index[b].tolist())
        report = {"examples": seen["count"], "policy": policy, "kept": seen["count"] - len(seen["dropped"])}
        report.update({r: len(seen[r]) for r in REASONS if seen.get(r)})
        if policy == "missing" and seen["dropped"]:
            report["no_modality_left"] = len(seen["dropped"])
        REPORTS[(name, split)] = report
    for r, i in new_reasons:
        log.warning("%s %s: %s (example %d and maybe more); bad_examples=%r", name, split, r.replace("_", " "),
                    i, policy)


def reset(name: str = "") -> None:
    """Forgets the reports (of dataset ``name``, or all): e.g. before reading a split again."""
    with _LOCK:
        for key in [k for k in REPORTS if not name or k[0] == name]:
            REPORTS.pop(key, None)
            _SEEN.pop(key, None)


def reports_for(name: str) -> Dict[str, Dict]:
    """split -> report of the splits of dataset ``name`` loaded in this process."""
    return {s: dict(r) for (n, s), r in REPORTS.items() if n == name}


def summary_line(name: str, split: str) -> str:
    """The one-line summary of a loaded split ("" if it was not loaded)."""
    r = REPORTS.get((name, split))
    return _summary(name, split, r) if r else ""
