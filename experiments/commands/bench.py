"""``python -m experiments bench {fusion,train}``: throughput benchmarks.

    python -m experiments bench fusion [--quick] [--out DIR] [--blocks a,b] [--dtype float32|bfloat16]
                                       [--torch-compile | --no-torch-compile] [--runs N]
    python -m experiments bench train [--quick] [--out DIR] [--dtype float32|bfloat16] [--batch-size N]

``bench fusion`` writes DIR/fusion.json, DIR/fusion.md, DIR/throughput.png and
DIR/scaling.png (see ``benchmarks/fusion_throughput.py``); with ``--runs N``
also DIR/fusion_runs.md, the median and range of the ratios over N runs
(``benchmarks/fusion_runs.py``). ``bench train``
writes DIR/train.json and DIR/train.md: per configuration (av_digits, a ViT +
text transformer + cross-attention model) and parallel mode (single, pmap,
sharded) the compile time, steady examples/s and MFU of the real train step on
random inputs of the real shapes (see ``benchmarks/train_throughput.py``).
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
    p = subparsers.add_parser("bench", help="throughput benchmarks (fusion blocks, training step)",
                              description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="bench_target", metavar="TARGET", required=True)

    f = sub.add_parser("fusion", help="fusion blocks: examples/s, FLOPs, memory, vs PyTorch references")
    f.add_argument("--quick", action="store_true", help="small grid, about two minutes on an idle 2-core CPU")
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
    raise UserError(f"unknown bench target {args.bench_target!r}; use 'fusion' or 'train'")
