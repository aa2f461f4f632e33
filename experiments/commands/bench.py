"""``python -m experiments bench {fusion,train,input}``: throughput benchmarks.

    python -m experiments bench fusion [--quick] [--out DIR] [--blocks a,b] [--dtype float32|bfloat16]
                                       [--torch-compile | --no-torch-compile] [--runs N]
    python -m experiments bench train [--quick] [--out DIR] [--dtype float32|bfloat16] [--batch-size N]
    python -m experiments bench input [--quick] [--out DIR] [--data_dir DIR] [--cache_dir DIR]

``bench fusion`` writes DIR/fusion.json, DIR/fusion.md, DIR/throughput.png and
DIR/scaling.png (see ``benchmarks/fusion_throughput.py``); with ``--runs N``
also DIR/fusion_runs.md, the median and range of the ratios over N runs
(``benchmarks/fusion_runs.py``). ``bench train``
writes DIR/train.json and DIR/train.md: per configuration (av_digits, a ViT +
text transformer + cross-attention model) and parallel mode (single, pmap,
sharded) the compile time, steady examples/s and MFU of the real train step on
random inputs of the real shapes (see ``benchmarks/train_throughput.py``).
``bench input`` writes DIR/input.json and DIR/input.md: for P = 1, 2, 4 real
processes each reading its rows of the same global batches, examples/s and
peak resident memory per process, on av_digits (next to its train step) and
on a 224x224 JPEG dataset it builds into DIR/cache (see
``benchmarks/input_bench.py``).
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import List, Optional

from benchmarks.common import DTYPES
from experiments.errors import UserError


def _blocks(value: Optional[str]) -> Optional[List[str]]:
    if value is None:
        return None
    names = [b.strip() for b in value.split(",") if b.strip()]
    if not names:
        raise UserError("--blocks needs at least one fusion block name, e.g. --blocks concat,low_rank")
    return names


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("bench", help="throughput benchmarks (fusion blocks, training step, input pipeline)",
                              description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="bench_target", metavar="TARGET", required=True)

    f = sub.add_parser("fusion", help="fusion blocks: examples/s, FLOPs, memory, vs PyTorch references")
    f.add_argument("--quick", action="store_true", help="small grid (27 blocks: about 13 minutes on a busy 2-core CPU; --blocks for fewer)")
    f.add_argument("--out", default="bench_out", help="output directory (default: bench_out)")
    f.add_argument("--blocks", default=None, help="comma-separated fusion block names (default: all)")
    tc = f.add_mutually_exclusive_group()
    tc.add_argument("--torch-compile", dest="torch_compile", action="store_true", default=None,
                    help="also measure torch.compile (default: on in the full run, off in --quick)")
    tc.add_argument("--no-torch-compile", dest="torch_compile", action="store_false")
    f.add_argument("--no-plots", action="store_true", help="skip the matplotlib plots")
    f.add_argument("--runs", type=int, default=1,
                   help="run the grid N times (runs 2..N under OUT/repeats/) and write OUT/fusion_runs.md, "
                        "the median and range of the mmjax / PyTorch ratios (default 1)")
    f.add_argument("--dtype", default="float32", choices=DTYPES,
                   help="compute dtype of mmjax and the PyTorch references (params stay float32; "
                        "bfloat16 is the GPU setting)")

    t = sub.add_parser("train", help="train-step throughput and MFU per model and parallel mode")
    t.add_argument("--quick", action="store_true")
    t.add_argument("--out", default="bench_out")
    t.add_argument("--dtype", default="float32", choices=DTYPES,
                   help="compute dtype of the models (params stay float32); bfloat16 is the GPU setting")
    t.add_argument("--batch-size", type=int, default=None,
                   help="batch of the larger ViT + text model (default 16 with --quick, else 32)")

    i = sub.add_parser("input", help="input pipeline per process for P = 1, 2, 4 processes: examples/s, memory")
    i.add_argument("--quick", action="store_true",
                   help="JPEG datasets of 2k and 10k examples (default 20k and 100k), fewer batches")
    i.add_argument("--out", default="bench_out")
    i.add_argument("--data_dir", default=None,
                   help="tfds data dir of av_digits (default $MMJAX_DATA_DIR or ~/tensorflow_datasets); "
                        "built on first use")
    i.add_argument("--cache_dir", default=None,
                   help="where the JPEG datasets are built once and reused (default OUT/cache)")
    return p


def run(args: argparse.Namespace) -> int:
    if args.bench_target == "fusion":
        from benchmarks import fusion_throughput as ft
        from benchmarks.common import BenchmarkConfigError

        grid = ft.QUICK if args.quick else ft.FULL
        if args.torch_compile is not None and args.torch_compile != grid.torch_compile:
            grid = dataclasses.replace(grid, torch_compile=args.torch_compile)
            if args.quick and args.torch_compile:
                # One compiled case per block keeps --quick short.
                grid = dataclasses.replace(grid, torch_compile_batches=(grid.batches[0],))
        grid = dataclasses.replace(grid, dtype=args.dtype)
        if args.runs < 1:
            raise UserError(f"--runs must be >= 1, got {args.runs}")
        blocks = _blocks(args.blocks)
        try:
            if args.runs == 1:
                ft.run(args.out, grid=grid, blocks=blocks, plots=not args.no_plots)
            else:
                from benchmarks.fusion_runs import run_repeated

                run_repeated(args.out, args.runs, lambda out, plots: ft.run(
                    out, grid=grid, blocks=blocks, plots=plots and not args.no_plots))
        except BenchmarkConfigError as e:
            raise UserError(str(e)) from None
        return 0
    if args.bench_target == "train":
        from benchmarks import train_throughput as tt
        from benchmarks.common import BenchmarkConfigError

        try:
            tt.run(args.out, quick=args.quick, dtype=args.dtype, batch_size=args.batch_size)
        except (tt.TrainSystemUnavailable, BenchmarkConfigError) as e:
            raise UserError(str(e)) from None
        return 0
    if args.bench_target == "input":
        import shlex
        import sys

        from benchmarks import input_bench as ib

        command = "python -m experiments " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        ib.run(args.out, plan=ib.QUICK if args.quick else ib.FULL, data_dir=args.data_dir, cache_dir=args.cache_dir,
               command=command if sys.argv[1:2] == ["bench"] else None)
        return 0
    raise UserError(f"unknown bench target {args.bench_target!r}; use 'fusion', 'train' or 'input'")
