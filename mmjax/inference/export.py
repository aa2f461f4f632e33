"""A trained classifier as a self-contained StableHLO artifact (``jax.export``), with a JSON description.

``export(model, FILE)`` writes

* ``FILE``: ``jax.export.export(jax.jit(f))(batch_spec).serialize()``, where ``f(batch) -> (b, C)``
  probabilities is the whole inference path after decoding: uint8 images normalised
  (``(x / 255 - mean) / std``, missing rows zero), the classifier in eval mode (batch norm's
  running statistics, no dropout), softmax (sigmoid for ``sigmoid_bce`` runs). The weights
  are constants inside it. The batch dimension is symbolic (``b``): any batch size runs.
* ``FILE.json``: the inputs (pytree key, shape with "b", dtype, which are masks), the output,
  class names and the preprocessing facts (image size and norms, sample rate, lengths, tokenizer).

Running it needs jax and numpy only, not mmjax::

    exp = jax.export.deserialize(open(FILE, "rb").read())
    probs = exp.call({"inputs": {...}, "modality_mask": {...}, "token_mask": {...}})
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Sequence

from mmjax.inference.load import LoadedModel
from mmjax.train import files

FORMAT = "mmjax.export/1"


def batch_spec(model: LoadedModel, batch_dim: Any) -> Dict[str, Any]:
    """The exported function's argument: ShapeDtypeStructs of a batch with leading dimension ``batch_dim``."""
    import jax
    import numpy as np

    example = model.example_batch(1)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct((batch_dim,) + x.shape[1:], np.dtype(x.dtype)), example)


def _inputs_doc(model: LoadedModel) -> List[Dict[str, Any]]:
    out = []
    for m, s in sorted(model.specs.items()):
        out.append({"key": ["inputs", m], "modality": m, "kind": s.kind, "shape": ["b", *s.shape],
                    "dtype": s.dtype, "mask": False})
        out.append({"key": ["modality_mask", m], "modality": m, "shape": ["b"], "dtype": "bool", "mask": True,
                    "meaning": "False: the modality is missing for that example"})
        if s.sequence:
            out.append({"key": ["token_mask", m], "modality": m, "shape": ["b", s.shape[0]], "dtype": "bool",
                        "mask": True, "meaning": "True at real tokens / samples"})
    return out


def _preprocessing_doc(model: LoadedModel) -> Dict[str, Dict[str, Any]]:
    out: Dict[str, Dict[str, Any]] = {}
    for m, s in sorted(model.specs.items()):
        d: Dict[str, Any] = {"kind": s.kind}
        if s.kind == "image":
            d.update(image_size=list(s.shape[:2]), channels=s.shape[2], mean=list(s.norm[0]), std=list(s.norm[1]),
                     note="uint8 pixels in; normalised inside the exported function")
        elif s.kind == "video":
            d.update(frames=s.shape[0], image_size=list(s.shape[1:3]), channels=s.shape[3], mean=list(s.norm[0]),
                     std=list(s.norm[1]), note="uint8 frames (B, F, H, W, C) in; normalised inside the exported function")
        elif s.kind == "audio":
            d.update(sample_rate=s.sample_rate, length=s.shape[0], scale=s.scale,
                     note="float32 waveform in [-1, 1], cropped (start kept) or zero-padded to length")
        elif s.kind == "text" and s.tokenizer_dir:
            d.update(max_len=s.shape[0], tokenizer=os.path.join(str(s.tokenizer_dir), "tokenizer.json"),
                     note="int32 ids and token_mask from that tokenizer (its special tokens and pad id)")
        elif s.kind == "text":
            d.update(max_len=s.shape[0], tokenizer=s.tokenizer or "byte",
                     note="int32 ids with BOS/EOS, 0 = padding; token_mask = ids != 0")
        elif s.zscore is not None:
            d.update(mean=list(s.zscore[0]), std=list(s.zscore[1]),
                     note="float32 vector in, already z-scored: (x - mean) / std with these statistics")
        elif s.standardized:
            d.update(note="z-scored with the dataset's statistics during training")
        out[m] = d
    return out


def export(model: LoadedModel, path: str, *, platforms: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Serialises ``model``'s inference path to ``path`` and its description to ``path + ".json"``.

    ``platforms``: e.g. ("cpu", "cuda"); default the current backend. Returns the description.
    """
    import jax

    (b,) = jax.export.symbolic_shape("b")
    variables = model.variables

    def probs(batch):
        return model.forward(variables, batch, probs=True)

    exported = jax.export.export(jax.jit(probs), platforms=platforms)(batch_spec(model, b))
    blob = exported.serialize()
    files.write_bytes(path, blob)  # whole or not at all (temporary file + rename); creates the folder
    doc = {
        "format": FORMAT,
        "load": "jax.export.deserialize(open(FILE, 'rb').read()).call(batch)",
        "jax_version": jax.__version__,
        "platforms": list(exported.platforms),
        "step": model.step,
        "loss": model.loss,
        "inputs": _inputs_doc(model),
        "output": {"shape": ["b", len(model.class_names)], "dtype": "float32",
                   "meaning": "per-class sigmoid probabilities" if model.loss == "sigmoid_bce"
                   else "softmax class probabilities"},
        "class_names": list(model.class_names),
        "preprocessing": _preprocessing_doc(model),
        "bytes": len(blob),
    }
    files.write_text(os.fspath(path) + ".json", json.dumps(doc, indent=2) + "\n")
    return doc
