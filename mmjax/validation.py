"""Host-side (numpy) batch validation against a spec, before anything is compiled.

A :class:`BatchSpec` says which modalities a batch carries, the per-example
shape and dtype kind of each (when known), the number of classes and the
label format. :func:`spec_from_config` derives it from the model config and
the dataset info; :meth:`BatchSpec.freeze` then pins the shapes and dtypes of
the first batch, so a later batch that changes shape (which would trigger a
recompile or a crash inside XLA) is reported with the modality and both shapes.

Every problem raises :class:`BatchValidationError` (a ``ValueError``) naming
the key and what was expected versus what was given, e.g.::

    batch['inputs']['a']: expected shape (B, 6) float, got (8, 5) float32

NaN/Inf checks only look at the rows (and tokens) that the model uses: a
modality masked out by ``modality_mask`` may hold garbage, because fusion
blocks replace it with zeros before using it.
"""
from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from mmjax import errors

TOP_LEVEL_KEYS = ("inputs", "token_mask", "modality_mask", "label", "weight")
_KIND_NAMES = {"f": "float", "i": "int", "u": "int", "b": "bool"}


class BatchValidationError(errors.InputError):
    """A batch does not match what the model and dataset promise."""


@dataclasses.dataclass(frozen=True)
class ArraySpec:
    """Per-example ``shape`` (None = any size on that axis, None overall = any rank) and dtype ``kind``.

    ``kind`` is "f" (floating), "i" (integer, signed or not), "b" (bool) or None (any).
    """

    shape: Optional[Tuple[Optional[int], ...]] = None
    kind: Optional[str] = None

    def describe(self) -> str:
        dims = "" if self.shape is None else "".join(f", {'?' if d is None else d}" for d in self.shape)
        shape = "(B, ...)" if self.shape is None else f"(B{dims})"
        return f"{shape} {_KIND_NAMES.get(self.kind, 'any dtype')}" if self.kind else shape


def _kind(dtype: np.dtype) -> str:
    k = np.dtype(dtype).kind
    return "i" if k in "iu" else k


@dataclasses.dataclass(frozen=True)
class BatchSpec:
    """What a batch must look like.

    Attributes:
      modalities: name -> :class:`ArraySpec` of ``batch["inputs"][name]``.
      num_classes: C; labels must lie in [0, C).
      label: "int" ((B,) integer class ids) or "multi" ((B, C) targets in [0, 1]).
      batch_size: the per-process batch size B, or None for any (> 0).
      optional_modalities: names that may be absent from ``inputs``.
    """

    modalities: Mapping[str, ArraySpec]
    num_classes: Optional[int] = None
    label: str = "int"
    batch_size: Optional[int] = None
    optional_modalities: Tuple[str, ...] = ()

    # ------------------------------------------------------------------ derive
    def freeze(self, batch: Mapping[str, Any]) -> "BatchSpec":
        """This spec with every modality's shape and dtype kind pinned to ``batch``'s (validate it first)."""
        inputs = batch["inputs"]
        mods = {m: ArraySpec(tuple(np.shape(inputs[m])[1:]), _kind(np.asarray(inputs[m]).dtype))
                for m in self.modalities if m in inputs}
        return dataclasses.replace(self, modalities=mods, batch_size=int(len(np.asarray(batch["label"]))))

    # ------------------------------------------------------------------ check
    def validate(self, batch: Any, *, check_finite: bool = True, where: str = "batch") -> None:
        """Raises :class:`BatchValidationError` on the first problem found in ``batch``.

        Args:
          batch: the nested numpy batch (ARCHITECTURE.md).
          check_finite: also look for NaN/Inf in the float inputs, labels and weights.
          where: how to name the batch in messages (e.g. "train batch at step 12").
        """
        self._check_keys(batch, where)
        label = _array(batch["label"], f"{where}['label']")
        if label.ndim == 0:
            raise BatchValidationError(f"{where}['label']: expected shape (B,) or (B, C), got a scalar")
        b = label.shape[0]
        if b == 0:
            raise BatchValidationError(f"{where}: the batch is empty (batch size 0)")
        if self.batch_size is not None and b != self.batch_size:
            raise BatchValidationError(f"{where}: expected batch size {self.batch_size}, got {b} (from 'label')")
        arrays = self._check_inputs(batch["inputs"], b, where)
        present = self._masks(batch, "modality_mask", arrays, b, where, lambda m, x: (b,))
        tokens = self._masks(batch, "token_mask", arrays, b, where,
                             lambda m, x: x.shape[:2] if x.ndim >= 2 else None)
        self._check_label(label, b, where)
        weight = None
        if batch.get("weight") is not None:
            weight = _array(batch["weight"], f"{where}['weight']")
            if weight.shape != (b,) or _kind(weight.dtype) not in "fi":
                raise BatchValidationError(f"{where}['weight']: expected shape ({b},) float, got {weight.shape} "
                                           f"{weight.dtype}")
        if not check_finite:
            return
        _check_finite(arrays, present, tokens, label, weight, b, where)
        if weight is not None and (weight < 0).any():
            raise BatchValidationError(f"{where}['weight']: negative example weights")

    def _check_keys(self, batch: Any, where: str) -> None:
        """The batch's top-level keys and its modalities against the spec."""
        if not isinstance(batch, Mapping):
            raise BatchValidationError(f"{where}: expected a dict with keys {list(TOP_LEVEL_KEYS)}, "
                                       f"got {type(batch).__name__}")
        unexpected = sorted(set(batch) - set(TOP_LEVEL_KEYS))
        if unexpected:
            raise BatchValidationError(f"{where}: unexpected keys {unexpected}{_hint(unexpected[0], TOP_LEVEL_KEYS)}; "
                                       f"a batch has {list(TOP_LEVEL_KEYS)}")
        for key in ("inputs", "label"):
            if key not in batch:
                raise BatchValidationError(f"{where}: missing key {key!r}")
        inputs = batch["inputs"]
        if not isinstance(inputs, Mapping):
            raise BatchValidationError(f"{where}['inputs']: expected a dict modality -> array, got {type(inputs).__name__}")
        missing = sorted(set(self.modalities) - set(inputs) - set(self.optional_modalities))
        if missing:
            raise BatchValidationError(f"{where}['inputs']: missing modality {missing[0]!r} (expected "
                                       f"{sorted(self.modalities)}, got {sorted(inputs)})")
        extra = sorted(set(inputs) - set(self.modalities))
        if extra:
            raise BatchValidationError(f"{where}['inputs']: unexpected modality {extra[0]!r}"
                                       f"{_hint(extra[0], self.modalities)}; the model has {sorted(self.modalities)}")

    def _check_inputs(self, inputs: Mapping[str, Any], b: int, where: str) -> Dict[str, np.ndarray]:
        """Each modality's batch size, shape and dtype against its spec -> the arrays by name."""
        arrays = {m: _array(inputs[m], f"{where}['inputs'][{m!r}]") for m in sorted(inputs)}
        for m, x in arrays.items():
            name = f"{where}['inputs'][{m!r}]"
            spec = self.modalities[m]
            if x.ndim == 0 or x.shape[0] != b:
                raise BatchValidationError(f"{name}: expected {spec.describe()} with B={b} (from 'label'), "
                                           f"got shape {x.shape}")
            if spec.shape is not None and (x.ndim - 1 != len(spec.shape) or any(
                    want is not None and want != got for want, got in zip(spec.shape, x.shape[1:]))):
                raise BatchValidationError(f"{name}: expected shape {spec.describe()}, got {x.shape} {x.dtype}")
            if spec.kind is not None and _kind(x.dtype) != spec.kind:
                raise BatchValidationError(f"{name}: expected dtype {_KIND_NAMES.get(spec.kind, spec.kind)}, "
                                           f"got {x.dtype} (shape {x.shape})")
            if _kind(x.dtype) not in "fib":
                raise BatchValidationError(f"{name}: unsupported dtype {x.dtype}")
        return arrays

    def _masks(self, batch, key, arrays, b, where, shape_of) -> Dict[str, np.ndarray]:
        masks = batch.get(key)
        if masks is None:
            return {}
        if not isinstance(masks, Mapping):
            raise BatchValidationError(f"{where}[{key!r}]: expected a dict modality -> bool array, "
                                       f"got {type(masks).__name__}")
        out = {}
        for m in sorted(masks):
            name = f"{where}[{key!r}][{m!r}]"
            if m not in arrays:
                raise BatchValidationError(f"{name}: no such modality in inputs {sorted(arrays)}")
            x = _array(masks[m], name)
            want = shape_of(m, arrays[m])
            if want is None or x.shape != tuple(want):
                raise BatchValidationError(f"{name}: expected bool shape {tuple(want) if want else '(B, L)'}, "
                                           f"got {x.shape}")
            if _kind(x.dtype) == "b":
                out[m] = x
            elif _kind(x.dtype) == "i" and np.isin(x, (0, 1)).all():
                out[m] = x.astype(bool)
            else:
                raise BatchValidationError(f"{name}: expected bool (or 0/1), got {x.dtype}")
        return out

    def _check_label(self, label: np.ndarray, b: int, where: str) -> None:
        c = self.num_classes
        if self.label == "int":
            if label.shape != (b,) or _kind(label.dtype) != "i":
                raise BatchValidationError(f"{where}['label']: expected ({b},) integer class ids, got "
                                           f"{label.shape} {label.dtype}")
            if c is not None and ((label < 0) | (label >= c)).any():
                bad = label[(label < 0) | (label >= c)]
                raise BatchValidationError(f"{where}['label']: class ids must be in [0, {c}), got "
                                           f"{sorted(set(bad.tolist()))[:5]}")
        else:
            if label.ndim != 2 or (c is not None and label.shape != (b, c)):
                raise BatchValidationError(f"{where}['label']: expected multi-label targets ({b}, {c}), got "
                                           f"{label.shape}")
            if ((label < 0) | (label > 1)).any():
                raise BatchValidationError(f"{where}['label']: multi-label targets must lie in [0, 1]")


def _array(x: Any, name: str) -> np.ndarray:
    try:
        return np.asarray(x)
    except Exception as e:  # noqa: BLE001 - ragged lists and odd objects
        raise BatchValidationError(f"{name}: not an array ({type(x).__name__}: {e})") from None


def _hint(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_sample_rates(encoders: Mapping[str, Any], info: Mapping[str, Any]) -> None:
    """An audio encoder whose ``sample_rate`` is not the dataset's would read every clip at the
    wrong speed (mel bands and time in the wrong place) without any error: refuse it."""
    rate = int(info.get("sample_rate") or 0)
    mods = info.get("modalities")  # the pipeline's: name -> {"kind", ...}; synthetic sources: a list
    kinds = {m: v.get("kind") for m, v in mods.items() if isinstance(v, Mapping)} if isinstance(mods, Mapping) else {}
    for m, spec in encoders.items():
        spec = dict(spec or {})
        if not rate or kinds.get(m) != "audio" or "sample_rate" not in spec:
            continue
        if int(spec["sample_rate"]) != rate:
            raise BatchValidationError(
                f"model.encoders.{m}.sample_rate is {spec['sample_rate']} but the dataset's audio is at {rate} Hz; "
                f"set --config.model.encoders.{m}.sample_rate={rate} (or resample the dataset)")


def spec_from_config(model_config: Mapping[str, Any], info: Mapping[str, Any], *, loss: str = "softmax_xent",
                     batch_size: Optional[int] = None, label: Optional[str] = None) -> BatchSpec:
    """The spec promised by ``config.model`` and the dataset ``info``.

    Modalities: ``model.encoders`` (plus, in ``early`` placement, the
    dataset's ``info["modalities"]``, since early fusion can tokenise raw
    inputs). Shapes come from ``info["shapes"]`` (modality -> per-example
    shape) or ``info["dims"]`` (modality -> D for (B, D) vectors) and dtype
    kinds from ``info["dtypes"]`` when the dataset gives them; otherwise the
    first batch decides (:meth:`BatchSpec.freeze`). ``label`` ("int" or
    "multi") overrides the label kind the loss implies.
    """
    encoders = dict(model_config.get("encoders") or {})
    check_sample_rates(encoders, info)
    names = set(encoders)
    optional: Tuple[str, ...] = ()
    if model_config.get("placement") == "early":
        extra = set(info.get("modalities") or ()) - names
        names |= extra
        optional = tuple(sorted(extra))
    shapes = dict(info.get("shapes") or {})
    dims = dict(info.get("dims") or {})
    dtypes = dict(info.get("dtypes") or {})
    mods = {}
    for m in sorted(names):
        shape = tuple(shapes[m]) if m in shapes else ((int(dims[m]),) if m in dims else None)
        kind = _kind(np.dtype(dtypes[m])) if m in dtypes else ("f" if m in dims else None)
        mods[m] = ArraySpec(shape, kind)
    num_classes = info.get("num_classes")
    return BatchSpec(mods, None if num_classes is None else int(num_classes),
                     label=label or ("multi" if loss == "sigmoid_bce" else "int"), batch_size=batch_size,
                     optional_modalities=optional)


def _check_finite(arrays, present, tokens, label, weight, b: int, where: str) -> None:
    """NaN/Inf in the float inputs (where the modality is present and the token real), labels, weights."""
    for m, x in arrays.items():
        if _kind(x.dtype) != "f":
            continue
        use = np.ones(x.shape[:1], bool) if m not in present else present[m]
        use = use.reshape((b,) + (1,) * (x.ndim - 1))
        if m in tokens and x.ndim >= 2:
            use = use & tokens[m].reshape(tokens[m].shape + (1,) * (x.ndim - 2))
        bad = ~np.isfinite(x) & use
        if bad.any():
            rows = np.unique(np.nonzero(bad)[0])
            raise BatchValidationError(
                f"{where}['inputs'][{m!r}]: {int(bad.sum())} NaN/Inf values in examples {rows[:5].tolist()}"
                f"{'...' if len(rows) > 5 else ''} (of a {x.shape} batch)")
    for key, x in (("label", label), ("weight", weight)):
        if x is not None and _kind(x.dtype) == "f" and not np.isfinite(x).all():
            raise BatchValidationError(f"{where}['{key}']: contains NaN/Inf")
