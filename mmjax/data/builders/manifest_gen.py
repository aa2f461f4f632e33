"""The recipe of a dataset built from a manifest (CSV or JSONL, one row per example); no tensorflow.

Manifest:
  * CSV with a header row, or JSONL (``.jsonl``/``.json``: one JSON object per line). Rows are
    numbered from 1 (the CSV header is not a row). Values are read as strings, surrounding
    whitespace removed.
  * ``label`` column (another with ``label=``): class names. Class ids follow the names
    **sorted** (so the same classes give the same ids whatever the row order). Empty: an error.
  * ``split`` column (optional; another with ``split_column=``): ``train``, ``validation`` or
    ``test``. Without it each row goes to train / validation / test (80 / 10 / 10) by the first
    8 bytes of sha256 over its values (column order, joined by U+001F) mod 10: 0-7 train, 8
    validation, 9 test, so a row keeps its split when rows are added or reordered. A split that
    gets no row is left out (with a note); train must get rows.
  * Modality columns: ``NAME=COLUMN:KIND`` specs (KIND: image, audio, text, vector), or, when no
    spec is given, every other column, its kind inferred from the first row's value: ``.png``
    ``.jpg`` ``.jpeg`` image, ``.wav`` audio, ``.npy`` vector, anything else text (a value naming an
    existing file of another extension is an error rather than a text).
  * File paths are relative to the manifest's directory (absolute paths are kept).

Checks run over every row before anything is written (:func:`make_plan`); each failure is a
one-line DataConfigError naming the row, column and problem. Images are decoded and resized to
one size (``image_size`` or the first image's; bilinear; a note counts the resized ones), with
one channel when every image of the column is grayscale, else RGB. Audio is mono int16
resampled to one rate (``sample_rate`` or the first clip's; a note counts the resampled clips)
and cropped to ``audio_seconds`` (default: the longest clip); the pipeline pads it and masks the
real samples. Text is stored as given; ``text_max_len`` (default: the longest text's UTF-8
bytes + 2, at most 512) is the tokenizer length the data config uses.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple

from mmjax.data.builders import manifest_files as files
from mmjax.data.errors import DataConfigError

KINDS = ("image", "audio", "text", "vector")
SPLITS = ("train", "validation", "test")
RESERVED = ("row", "label")  # feature names of every example besides the modalities
TEXT_MAX_LEN_CAP = 512
VERSION = "1.0.0"  # of every dataset built from a manifest: data_dir/NAME/1.0.0


@dataclasses.dataclass
class Modality:
    """One modality: feature ``name`` <- manifest ``column`` of ``kind``; ``shape``: image (H, W, C),
    vector (D,); ``length``: audio samples kept, or the text tokenizer length."""

    name: str
    column: str
    kind: str
    shape: Tuple[int, ...] = ()
    length: int = 0


@dataclasses.dataclass
class Plan:
    """What will be built: checked rows, their labels and splits, the modalities' shapes, notes."""

    manifest: str
    rows: List[Dict[str, str]]
    modalities: List[Modality]
    labels: List[int]  # class id of each row
    class_names: List[str]
    splits: Dict[str, List[int]]  # split -> row positions (0-based)
    sample_rate: int = 0  # of every audio modality (0: none)
    split_rule: str = ""  # how rows were given their split
    notes: List[str] = dataclasses.field(default_factory=list)

    def where(self, i: int, column: str) -> str:
        return f"{self.manifest} row {i + 1} column {column!r}"

    def path(self, i: int, m: Modality) -> str:
        return os.path.join(os.path.dirname(os.path.abspath(self.manifest)), self.rows[i][m.column])


def read_manifest(path: str) -> Tuple[List[str], List[Dict[str, str]]]:
    """A CSV or JSONL manifest -> (column names, rows as column -> string)."""
    if not os.path.isfile(path):
        raise DataConfigError(f"manifest {path} does not exist")
    with open(path, newline="", encoding="utf-8") as f:
        if path.lower().endswith((".jsonl", ".json")):
            rows = []
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise DataConfigError(f"{path} line {n}: not a JSON object ({e})") from None
                    if not isinstance(obj, dict):
                        raise DataConfigError(f"{path} line {n}: not a JSON object")
                    rows.append({str(k): "" if v is None else str(v).strip() for k, v in obj.items()})
            columns = list(dict.fromkeys(k for r in rows for k in r))
        else:
            reader = csv.DictReader(f)
            columns = list(reader.fieldnames or [])
            rows = [{k: (v or "").strip() for k, v in r.items() if k is not None} for r in reader]
    if not rows:
        raise DataConfigError(f"manifest {path} has no rows")
    return columns, rows


def parse_modality(spec: str) -> Tuple[str, str, Optional[str]]:
    """``NAME=COLUMN[:KIND]`` -> (name, column, kind or None)."""
    m = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)=([^:]+)(?::([a-z]+))?", spec.strip())
    if not m:
        raise DataConfigError(f"--modality {spec!r}: expected NAME=COLUMN or NAME=COLUMN:KIND (KIND: {', '.join(KINDS)})")
    name, column, kind = m.groups()
    if kind is not None and kind not in KINDS:
        raise DataConfigError(f"--modality {spec!r}: unknown kind {kind!r} (one of {', '.join(KINDS)})")
    if name in RESERVED:
        raise DataConfigError(f"--modality {spec!r}: {name!r} is reserved; choose another modality name")
    return name, column, kind


def _infer_kind(manifest: str, column: str, value: str) -> str:
    kind = files.kind_of(value)
    if kind:
        return kind
    path = os.path.join(os.path.dirname(os.path.abspath(manifest)), value)
    ext = os.path.splitext(value)[1]
    if ext and os.path.isfile(path):
        raise DataConfigError(
            f"{manifest} row 1 column {column!r}: unknown extension {ext!r} ({value}); files read: "
            f"{', '.join(e for exts in files.EXTENSIONS.values() for e in exts)}")
    return "text"


def choose_modalities(manifest: str, columns: Sequence[str], rows: Sequence[Dict[str, str]],
                      specs: Sequence[str], label: str, split_column: str, notes: List[str]) -> List[Modality]:
    """The modalities from ``specs`` (``NAME=COLUMN[:KIND]``), or inferred from every column but the
    label and split ones (noted: the inference is printed)."""
    parsed = [parse_modality(s) for s in specs]
    if not parsed:
        parsed = [(re.sub(r"\W", "_", c), c, None) for c in columns if c not in (label, split_column)]
    mods = []
    for (name, column, kind), spec in zip(parsed, list(specs) or [None] * len(parsed)):
        if column not in columns:
            raise DataConfigError(f"--modality {spec}: no column {column!r} in {manifest} (columns: {', '.join(columns)})")
        mods.append(Modality(name, column, kind or _infer_kind(manifest, column, rows[0].get(column, ""))))
    names = [m.name for m in mods]
    if not mods or len(set(names)) != len(names) or set(names) & set(RESERVED):
        raise DataConfigError(f"{manifest}: the modalities must be one or more distinct names other than "
                              f"{', '.join(RESERVED)}, got {', '.join(names) or 'none'} (choose with --modality)")
    if not specs:
        notes.append("modalities inferred from the first row (choose with --modality NAME=COLUMN:KIND): "
                     + ", ".join(f"{m.name}={m.column}:{m.kind}" for m in mods))
    return mods


def row_bucket(columns: Sequence[str], row: Dict[str, str]) -> str:
    """The split of a row without a split column: sha256 of its values -> train / validation / test."""
    digest = hashlib.sha256("\x1f".join(row.get(c, "") for c in columns).encode("utf-8")).digest()
    bucket = int.from_bytes(digest[:8], "big") % 10
    return "train" if bucket < 8 else ("validation" if bucket == 8 else "test")


def assign_splits(manifest: str, columns: Sequence[str], rows: Sequence[Dict[str, str]], split_column: str,
                  notes: List[str]) -> Dict[str, List[int]]:
    """split -> row positions, from the split column or by :func:`row_bucket`."""
    out: Dict[str, List[int]] = {s: [] for s in SPLITS}
    if split_column in columns:
        for i, r in enumerate(rows):
            s = r.get(split_column, "")
            if s not in SPLITS:
                raise DataConfigError(f"{manifest} row {i + 1} column {split_column!r}: split {s!r} is not one of "
                                      f"{', '.join(SPLITS)}")
            out[s].append(i)
    else:
        hashed = [c for c in columns if c != split_column]
        for i, r in enumerate(rows):
            out[row_bucket(hashed, r)].append(i)
        notes.append(f"no {split_column!r} column: rows split 80/10/10 train/validation/test by a hash of each row")
    for s in [s for s in SPLITS if not out[s]]:
        if s == "train":
            raise DataConfigError(f"{manifest}: no row is in the train split")
        notes.append(f"split {s!r} has no rows and is left out")
        del out[s]
    return out


def class_labels(manifest: str, rows: Sequence[Dict[str, str]], label: str, columns: Sequence[str]):
    """(class id per row, sorted class names)."""
    if label not in columns:
        raise DataConfigError(f"{manifest}: no label column {label!r} (columns: {', '.join(columns)})")
    for i, r in enumerate(rows):
        if not r.get(label, "").strip():
            raise DataConfigError(f"{manifest} row {i + 1} column {label!r}: empty label")
    names = sorted({r[label].strip() for r in rows})
    index = {n: k for k, n in enumerate(names)}
    return [index[r[label].strip()] for r in rows], names


def make_plan(manifest: str, specs: Sequence[str] = (), *, image_size: Optional[Tuple[int, int]] = None,
              sample_rate: Optional[int] = None, audio_seconds: Optional[float] = None,
              text_max_len: Optional[int] = None, label: str = "label", split_column: str = "split") -> Plan:
    """Reads and checks ``manifest`` and every file it names (see the module docstring) -> the Plan."""
    from mmjax.data.builders import manifest_check as check

    columns, rows = read_manifest(manifest)
    notes: List[str] = []
    mods = choose_modalities(manifest, columns, rows, specs, label, split_column, notes)
    labels, names = class_labels(manifest, rows, label, columns)
    splits = assign_splits(manifest, columns, rows, split_column, notes)
    rule = (f"column {split_column!r}" if split_column in columns
            else "sha256 of the row's values: 80/10/10 train/validation/test")
    plan = Plan(manifest, rows, mods, labels, names, splits, split_rule=rule, notes=notes)
    for m in mods:
        if m.kind == "image":
            check.check_images(plan, m, image_size)
        elif m.kind == "text":
            check.check_text(plan, m, text_max_len, TEXT_MAX_LEN_CAP)
        elif m.kind == "vector":
            check.check_vectors(plan, m)
    audio = [m for m in mods if m.kind == "audio"]
    if audio:
        check.check_audio(plan, audio, sample_rate, audio_seconds)
    return plan


def example(plan: Plan, i: int) -> Dict[str, object]:
    """Row ``i`` (0-based) as a tfds example: ``row`` (1-based), ``label`` (class id) and, per modality,
    image uint8 (H, W, C), audio int16 (<= length,) at ``plan.sample_rate``, text str, vector float32 (D,)."""
    from mmjax.data.builders import manifest_files as f

    ex: Dict[str, object] = {"row": i + 1, "label": plan.labels[i]}
    for m in plan.modalities:
        where = plan.where(i, m.column)
        if m.kind == "text":
            ex[m.name] = plan.rows[i].get(m.column, "")
        elif m.kind == "image":
            ex[m.name] = f.image_array(plan.path(i, m), where, m.shape[:2], m.shape[2])
        elif m.kind == "vector":
            ex[m.name] = f.read_vector(plan.path(i, m), where)
        else:
            x, rate = f.read_wav(plan.path(i, m), where)
            if rate != plan.sample_rate:
                x = f.to_int16(f.resample(x, rate, plan.sample_rate))
            ex[m.name] = x[: m.length]
    return ex


def describe(plan: Plan) -> Dict[str, object]:
    """The plan as JSON-able metadata (recorded in the dataset as ``metadata["manifest"]``)."""
    return {
        "path": os.path.abspath(plan.manifest),
        "class_order": "sorted",
        "split_rule": plan.split_rule,
        "modalities": {m.name: {"column": m.column, "kind": m.kind, "shape": list(m.shape), "length": m.length}
                       for m in plan.modalities},
        "notes": list(plan.notes),
    }


def data_config(name: str, data_dir: Optional[str], modalities: Dict[str, Dict[str, object]]):
    """The mmjax data config (:mod:`mmjax.data.config`) that reads a manifest-built dataset, from its
    ``metadata["manifest"]["modalities"]``: images at their stored size, audio padded or cropped to the
    stored length (masked), text tokenized to the recorded length, vectors as stored."""
    from mmjax.data.config import _modality, base_config

    cfg = base_config()
    cfg.name, cfg.data_dir = name, data_dir
    mods = {}
    for m, d in sorted(modalities.items()):
        extra = {"audio": {"length": int(d["length"])}, "text": {"max_len": int(d["length"])}}.get(d["kind"], {})
        mods[m] = _modality(kind=d["kind"], feature=m, **extra)
    cfg.modalities = mods
    return cfg


def recorded(data_dir: Optional[str], name: str) -> Optional[Dict[str, object]]:
    """``metadata["manifest"]`` of the dataset ``name`` in ``data_dir`` (read from its metadata.json),
    or None when it is not a dataset built from a manifest."""
    from mmjax.data.config import resolve_data_dir

    path = os.path.join(resolve_data_dir(data_dir), name, VERSION, "metadata.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f).get("manifest")


def recorded_data_config(name: str, data_dir: Optional[str] = None):
    """The data config of the manifest-built dataset ``name`` in ``data_dir``, or None for any other dataset."""
    meta = recorded(data_dir, name)
    return data_config(name, data_dir, meta["modalities"]) if meta else None
