"""``python -m experiments data {build,info,convert} NAME``: prepare and inspect datasets.

build:   prepares a tfds dataset in ArrayRecord (mmjax's own builders are generated offline; needs tensorflow).
         ``build --from MANIFEST --name NAME``: your own files, listed in a CSV / JSONL manifest (see
         mmjax.data.builders.manifest_gen for the format, checks and split rule); also writes a training
         config next to the manifest (NAME_config.py, or --config_out) for ``python -m experiments train``.
info:    where it is, splits, sizes, features, per-modality shapes, class balance, bad examples and content
         hashes (reads every split once; needs no tensorflow).
convert: adds ArrayRecord files beside a prepared TFRecord dataset, once, so it can be read by index
         (public tfds datasets are mostly TFRecord; needs tensorflow).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import time

import numpy as np

from experiments.errors import UserError


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("data", help="build / inspect / convert datasets", description=__doc__)
    p.add_argument("action", choices=("build", "info", "convert"))
    p.add_argument("name", nargs="?", default=None, help="tfds name, e.g. av_digits, av_digits/tiny, stamps, cifar10")
    p.add_argument("--data_dir", default=None, help="tfds data dir (default $MMJAX_DATA_DIR or ~/tensorflow_datasets)")
    g = p.add_argument_group("build --from MANIFEST --name NAME (your own files)")
    g.add_argument("--from", dest="manifest", default=None, help="CSV or JSONL manifest, one row per example")
    g.add_argument("--name", dest="new_name", default=None, help="name of the new dataset (lower-case, e.g. my_data)")
    g.add_argument("--modality", action="append", default=[], metavar="NAME=COLUMN:KIND",
                   help="a modality from a column (KIND: image, audio, text, vector); repeat; default: every "
                        "column but label and split, kinds inferred from the file extensions")
    g.add_argument("--label", default="label", help="column of the class names (default: label)")
    g.add_argument("--split_column", default="split", help="column of train/validation/test (optional)")
    g.add_argument("--image_size", default=None, metavar="H,W", help="resize every image to H,W (default: the first image's)")
    g.add_argument("--sample_rate", type=int, default=None, help="resample all audio to this rate (default: the first clip's)")
    g.add_argument("--audio_seconds", type=float, default=None, help="crop audio to this length (default: the longest clip)")
    g.add_argument("--text_max_len", type=int, default=None, help="tokens per text (default: the longest text + 2, <= 512)")
    g.add_argument("--config_out", default=None, help="where to write the training config (default: next to the manifest)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing dataset of that name and its config file")
    return p


def _config(args):
    from mmjax.data import default_config
    from mmjax.data.builders import manifest_gen

    if not args.name:
        raise UserError(f"data {args.action}: a dataset NAME is needed (or build --from MANIFEST --name NAME)")
    cfg = default_config(args.name)
    cfg.data_dir = args.data_dir
    if not cfg.modalities:  # a dataset built from a manifest knows its modalities
        cfg = manifest_gen.recorded_data_config(args.name, args.data_dir) or cfg
    return cfg


def _check_writable(data_dir) -> None:
    """A read-only or full data dir is found now, before a build spends its time (mmjax.train.files.StorageError)."""
    from mmjax.data.config import resolve_data_dir
    from mmjax.train import files

    path = os.path.abspath(resolve_data_dir(data_dir))
    if os.path.isdir(path):
        files.check_writable(path)


def _image_size(text):
    if text is None:
        return None
    parts = text.lower().replace("x", ",").split(",")
    try:
        size = tuple(int(v) for v in parts) * (2 if len(parts) == 1 else 1)
    except ValueError:
        size = ()
    if len(size) != 2 or min(size) <= 0:
        raise UserError(f"--image_size {text!r}: expected H,W (e.g. 64,64) or one size S")
    return size


def build_from_manifest(args) -> int:
    """``data build --from MANIFEST --name NAME``: check, build, write the training config."""
    from experiments import manifest_config
    from mmjax.data.builders import manifest, manifest_gen
    from mmjax.data.config import resolve_data_dir

    name = args.new_name or args.name
    if not name:
        raise UserError("data build --from MANIFEST: name the new dataset with --name NAME")
    out = args.config_out or os.path.join(os.path.dirname(os.path.abspath(args.manifest)), f"{name}_config.py")
    if os.path.exists(out) and not args.overwrite:
        raise UserError(f"{out} exists: pass --overwrite to write it again (or --config_out elsewhere)")
    manifest.check_name(name, args.data_dir, args.overwrite)
    _check_writable(args.data_dir)
    t = time.time()
    plan = manifest_gen.make_plan(
        args.manifest, args.modality, image_size=_image_size(args.image_size), sample_rate=args.sample_rate,
        audio_seconds=args.audio_seconds, text_max_len=args.text_max_len, label=args.label,
        split_column=args.split_column)
    for note in plan.notes:
        print(f"note: {note}")
    b = manifest.build(plan, name, args.data_dir, overwrite=args.overwrite)
    print(f"{name}: prepared in {b.data_dir} from {args.manifest} ({time.time() - t:.1f} s)")
    for m in plan.modalities:
        print(f"  {m.name} <- column {m.column!r}: {m.kind} {tuple(m.shape) or (m.length,)}")
    print(f"  classes ({len(plan.class_names)}, sorted): {', '.join(plan.class_names[:20])}")
    for split, s in b.info.splits.items():
        print(f"  {split}: {s.num_examples} examples")
    data_dir = os.path.abspath(resolve_data_dir(args.data_dir))
    path = manifest_config.write(name, plan, manifest_gen.recorded_data_config(name, data_dir), out)
    print(f"training config: {path}\n  python -m experiments train {path} --workdir runs/{name}")
    return 0


def columns_sha256(cols) -> str:
    """sha256 over a split's decoded columns (sorted by name)."""
    h = hashlib.sha256()
    for k in sorted(cols):
        h.update(k.encode())
        h.update(np.ascontiguousarray(cols[k]).tobytes())
    return h.hexdigest()


def run(args) -> int:
    from mmjax.data import convert, dataset_info, split_columns
    from mmjax.data import bad_examples, source

    if args.manifest:
        if args.action != "build":
            raise UserError(f"--from MANIFEST goes with data build, not data {args.action}")
        return build_from_manifest(args)
    cfg = _config(args)
    if args.action in ("build", "convert"):
        _check_writable(cfg.data_dir)
    if args.action == "build":
        t = time.time()
        b = source.builder(cfg)
        print(f"{args.name}: prepared in {b.data_dir} ({time.time() - t:.1f} s)")
        for split, s in b.info.splits.items():
            print(f"  {split}: {s.num_examples} examples, {s.num_bytes / 1e6:.1f} MB")
        return 0
    if args.action == "convert":
        t = time.time()
        path = convert(cfg)
        print(f"{args.name}: readable by index in {path} ({time.time() - t:.1f} s)")
        return 0
    info = dataset_info(cfg)
    print(f"dataset: {info.name}  in {info.data_dir}")
    print(f"classes: {info.num_classes}  {', '.join(info.class_names[:20])}{' ...' if info.num_classes > 20 else ''}")
    print("modalities:")
    for m, mi in info.modalities.items():
        print(f"  {m}: {mi.kind} {mi.shape} {mi.dtype}{'  + token_mask' if mi.sequence else ''}")
    print("features:")
    print("  " + str(source.builder(cfg, prepare=False).info.features).replace("\n", "\n  "))
    print("splits:")
    for split, n in info.splits.items():
        cols = split_columns(cfg, split)
        line = f"  {split}: {n} examples"
        if "label" in cols and cols["label"].ndim == 1:
            counts = np.bincount(cols["label"][cols["keep"]], minlength=info.num_classes)
            line += f"; per class min {counts.min()} max {counts.max()}: {counts.tolist()}"
        print(line)
        # Counts of undecodable/empty/silent examples and what the bad_examples policy did.
        print(f"    {bad_examples.summary_line(cfg.name, split)}")
        if split in info.hashes:
            print(f"    content sha256 (recorded at build): {info.hashes[split]}")
        print(f"    pipeline columns sha256 (after fixed corruption): {columns_sha256(cols)}")
    return 0
