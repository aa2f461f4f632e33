"""``python -m experiments predict --workdir DIR MODALITY=VALUE ... [--json] [--latest] [--top_k K]``.

Loads DIR's best (``--latest``: most recent) checkpoint with :func:`mmjax.load`
and prints the class probabilities of one example, highest first. Each
``MODALITY=VALUE`` gives one input: a file for image (PNG/JPEG), audio (WAV)
and array modalities (``.npy``; one with a batch dimension predicts each row),
the text itself for text modalities, or comma-separated numbers for a vector.
Modalities left out are treated as missing. ``--json`` prints one JSON object:
``{"step", "class_names", "notes", "predictions": [{"probabilities": {name: p}, "top": [[name, p], ...]}]}``.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Dict, List, Sequence

import numpy as np

from experiments.errors import UserError


def add_parser(subparsers):
    p = subparsers.add_parser("predict", help="class probabilities of a trained run for given inputs",
                              description="class probabilities of a trained run for given inputs")
    p.add_argument("--workdir", required=True, help="the trained run's directory")
    p.add_argument("--latest", action="store_true", help="use the latest checkpoint instead of the best")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--top_k", type=int, default=5, help="classes shown per example (default 5; 0: all)")
    p.add_argument("inputs", nargs="*", metavar="MODALITY=VALUE", help="one input per modality")
    return p


def parse_inputs(pairs: Sequence[str], specs: Dict[str, Any]) -> Dict[str, Any]:
    """``["image=x.png", "text=a cat"]`` -> {modality: value}, values read as the modality's kind takes them."""
    out: Dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise UserError(f"inputs are MODALITY=VALUE, got {pair!r}")
        if name in out:
            raise UserError(f"modality {name!r} given twice")
        spec = specs.get(name)
        if spec is not None and spec.kind == "text":
            out[name] = value
        elif spec is not None and spec.kind == "vector" and not os.path.exists(value) and "," in value:
            try:
                out[name] = np.array([float(v) for v in value.split(",")], np.float32)
            except ValueError:
                raise UserError(f"modality {name!r}: expected a .npy file or comma-separated numbers, "
                                f"got {value!r}") from None
        else:
            out[name] = value  # a file path; inputs.py reports a missing or unreadable one
    return out


def rows(probs: np.ndarray, class_names: List[str], top_k: int) -> List[Dict[str, Any]]:
    """Per example: {"probabilities": {name: p} in class order, "top": [[name, p], ...] highest first}."""
    out = []
    k = len(class_names) if top_k <= 0 else min(top_k, len(class_names))
    for p in probs:
        order = np.argsort(-p, kind="stable")[:k]
        out.append({"probabilities": {n: float(v) for n, v in zip(class_names, p)},
                    "top": [[class_names[i], float(p[i])] for i in order]})
    return out


def run(args) -> int:
    import mmjax

    if not os.path.isdir(args.workdir) and "://" not in args.workdir:
        raise UserError(f"--workdir {args.workdir}: no such directory")
    model = mmjax.load(args.workdir, "latest" if args.latest else "best")
    probs = model.predict(parse_inputs(args.inputs, model.specs))
    out = rows(probs, model.class_names, args.top_k)
    if args.json:
        print(json.dumps({"step": model.step, "class_names": model.class_names, "notes": model.last_notes,
                          "predictions": out}))
        return 0
    for note in model.last_notes:
        print(f"note: {note}", file=sys.stderr)
    width = max(len(n) for n in model.class_names)
    for i, r in enumerate(out):
        if len(out) > 1:
            print(f"example {i}:")
        for name, p in r["top"]:
            print(f"  {name:<{width}}  {p:.4f}")
    return 0
