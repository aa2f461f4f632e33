"""``python -m experiments export --workdir DIR --out FILE [--latest] [--platforms cpu,cuda]``.

Writes DIR's best (``--latest``: most recent) checkpoint as a ``jax.export``
artifact (StableHLO, weights inside, symbolic batch dimension) to FILE and its
description (inputs, masks, class names, preprocessing) to FILE.json; see
:mod:`mmjax.inference.export`. Running it needs jax and numpy, not mmjax.
"""
from __future__ import annotations

import os

from experiments.errors import UserError

PLATFORMS = ("cpu", "cuda", "rocm", "tpu")


def add_parser(subparsers):
    p = subparsers.add_parser("export", help="export a trained run as a StableHLO artifact (jax.export)",
                              description="export a trained run as a StableHLO artifact (jax.export)")
    p.add_argument("--workdir", required=True, help="the trained run's directory")
    p.add_argument("--out", required=True, help="the artifact's path (its description goes to OUT.json)")
    p.add_argument("--latest", action="store_true", help="use the latest checkpoint instead of the best")
    p.add_argument("--platforms", default="",
                   help="comma-separated jax platforms to compile for (cpu, cuda, rocm, tpu); default: this one")
    return p


def run(args) -> int:
    import mmjax
    from mmjax.inference import export

    if not os.path.isdir(args.workdir) and "://" not in args.workdir:
        raise UserError(f"--workdir {args.workdir}: no such directory")
    if os.path.isdir(args.out):
        raise UserError(f"--out {args.out} is a directory: give a file name")
    platforms = tuple(p.strip() for p in args.platforms.split(",") if p.strip()) or None
    unknown = sorted(set(platforms or ()) - set(PLATFORMS))
    if unknown:
        raise UserError(f"--platforms: unknown platform {unknown[0]!r}; known: {', '.join(PLATFORMS)}")
    model = mmjax.load(args.workdir, "latest" if args.latest else "best")
    doc = export(model, args.out, platforms=platforms)
    print(f"exported step {model.step} ({len(model.class_names)} classes, inputs {', '.join(model.modalities)}; "
          f"{', '.join(doc['platforms'])}) to {args.out} ({doc['bytes']} bytes) and {args.out}.json")
    return 0
