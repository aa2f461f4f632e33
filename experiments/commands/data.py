"""``python -m experiments data {build,info,convert} NAME``: prepare and inspect datasets.

build:   prepares a tfds dataset in ArrayRecord (mmjax's own builders are generated offline; needs tensorflow).
info:    where it is, splits, sizes, features, per-modality shapes, class balance, bad examples and content
         hashes (reads every split once; needs no tensorflow).
convert: adds ArrayRecord files beside a prepared TFRecord dataset, once, so it can be read by index
         (public tfds datasets are mostly TFRecord; needs tensorflow).
"""
from __future__ import annotations

import argparse
import hashlib
import time

import numpy as np

from experiments.errors import UserError


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("data", help="build / inspect / convert datasets", description=__doc__)
    p.add_argument("action", choices=("build", "info", "convert"))
    p.add_argument("name", help="tfds name, e.g. av_digits, av_digits/tiny, stamps, cifar10")
    p.add_argument("--data_dir", default=None, help="tfds data dir (default $MMJAX_DATA_DIR or ~/tensorflow_datasets)")
    return p


def _config(args):
    from mmjax.data import default_config

    cfg = default_config(args.name)
    cfg.data_dir = args.data_dir
    return cfg


def columns_sha256(cols) -> str:
    """sha256 over a split's decoded columns (sorted by name)."""
    h = hashlib.sha256()
    for k in sorted(cols):
        h.update(k.encode())
        h.update(np.ascontiguousarray(cols[k]).tobytes())
    return h.hexdigest()


def run(args) -> int:
    from mmjax.data import DataConfigError, convert, dataset_info, split_columns
    from mmjax.data import bad_examples, source

    cfg = _config(args)
    try:
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
    except DataConfigError as e:
        raise UserError(str(e)) from None
