"""Fusion-block throughput, cost and memory, mmjax next to PyTorch references.

For every registered fusion block (``mmjax.fusion.names()``) and a grid of
sizes this measures, in one run on one machine:

* forward and forward+backward (gradient of mean(out^2) w.r.t. the params)
  examples/s in steady state, compile time reported separately;
* parameters (counted, and from the cost model), forward FLOPs per example
  from the cost model next to XLA's own count for the compiled programs;
* achieved FLOP/s (XLA's count / time) as a share of the matmul peak
  measured at the start of the run; for the ``large`` cases, whose share of
  peak is a target, a square matmul is timed in the same interleaved rounds
  as the block and the share is of that contemporaneous peak;
* memory of the compiled programs (temp + argument + output bytes);
* the PyTorch reference of the block (``benchmarks.reference_torch``) at the
  same sizes and dtype, eager and ``torch.compile``, and the ratio
  mmjax / PyTorch of examples/s (> 1: mmjax is faster).

Groups of cases in the grid:

* ``batch``: examples/s vs batch size, two modalities (throughput.png);
* ``modalities`` / ``dims``: how cost grows with the number of modalities
  and with the per-modality dim (scaling.png);
* ``tokens``: attention blocks vs token length;
* ``large``: the matmul-heavy blocks at sizes where they should approach
  the matmul peak.

Entry point: :func:`run` (the ``python -m experiments bench fusion`` command
calls it), which writes DIR/fusion.json, DIR/fusion.md and the plots. The
parts live next to it: the grid and its cases in ``fusion_grid``, per-block
inputs and sources in ``fusion_specs``, building the contenders in
``fusion_setup``, timing in ``fusion_measure``, the summary in
``fusion_summary``, fusion.md in ``fusion_report`` and the plots in
``fusion_plots``; this module re-exports their public names.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

from benchmarks.common import (
    BenchmarkConfigError,
    environment,
    fmt_rate,
    matmul_contenders,
    matmul_peak,
    torch_device,
    write_json,
)
# The public names of the benchmark's parts are re-exported (``__all__``): callers import them from here.
from benchmarks.fusion_grid import FULL, MATMUL_HEAVY, QUICK, TINY, Case, Grid, build_cases
from benchmarks.fusion_measure import measure_case
from benchmarks.fusion_plots import plot
from benchmarks.fusion_report import render_markdown
from benchmarks.fusion_setup import jax_dtype, make_inputs, prepare_jax, prepare_torch, random_params
from benchmarks.fusion_specs import SPECS, BlockSpec, render_catalogue, spec_for
from benchmarks.fusion_summary import (
    LMF_PAPER_SPEEDUP,
    TARGET_PEAK_SHARE,
    TARGET_RATIO,
    TARGET_SMALL_BATCH_RATIO,
    summarize,
)

__all__ = [
    "BlockSpec", "Case", "FULL", "Grid", "LMF_PAPER_SPEEDUP", "MATMUL_HEAVY", "QUICK", "SPECS",
    "TARGET_PEAK_SHARE", "TARGET_RATIO", "TARGET_SMALL_BATCH_RATIO", "TINY", "build_cases", "make_inputs",
    "measure_case", "plot", "prepare_jax", "prepare_torch", "random_params", "render_catalogue",
    "render_markdown", "run", "spec_for", "summarize", "torch_device",
]


def _check_blocks(blocks: Optional[Sequence[str]]) -> list:
    """``blocks`` (default: every registered block) as a list; BenchmarkConfigError if unknown or empty."""
    import mmjax.fusion as fusion

    known = fusion.names()
    blocks = list(known if blocks is None else blocks)
    unknown = [b for b in blocks if b not in known]
    if unknown:
        raise BenchmarkConfigError(f"unknown fusion block(s) {unknown}; registered: {known}")
    if not blocks:
        raise BenchmarkConfigError("no fusion blocks to benchmark")
    return blocks


def _log_case(log: Callable[[str], None], i: int, n: int, case: Case, row: Mapping[str, Any]) -> None:
    if "error" in row:
        log(f"[{i + 1}/{n}] {case.block} {case.group} B={case.batch} dims={case.dims}: "
            f"ERROR {row['error']}")
    else:
        tr = row["jax"]["train"]["examples_per_s"]
        ratio = row.get("ratio", {}).get("train_eager")
        log(f"[{i + 1}/{n}] {case.block} {case.group} B={case.batch} dims={case.dims}"
            + (f" T={case.token_length}" if case.token_length else "")
            + f": train {fmt_rate(tr)} ex/s" + (f", x{ratio:.2f} vs torch" if ratio else ""))


def run(
    out_dir: str,
    *,
    quick: bool = False,
    blocks: Optional[Sequence[str]] = None,
    grid: Optional[Grid] = None,
    plots: bool = True,
    log: Callable[[str], None] = print,
) -> Dict[str, Any]:
    """Runs the fusion benchmark and writes DIR/fusion.json, fusion.md, throughput.png, scaling.png.

    Args:
      out_dir: output directory (created).
      quick: the small grid (``QUICK``; 179 cases for the 27 blocks) instead of the full one.
      blocks: fusion block names (default: all registered).
      grid: overrides ``quick``.
      plots: write the PNG plots (needs matplotlib).
    Returns:
      the JSON document.
    """
    blocks = _check_blocks(blocks)
    grid = grid or (QUICK if quick else FULL)
    jax_dtype(grid.dtype)
    os.makedirs(out_dir, exist_ok=True)
    started = time.perf_counter()
    env = environment()
    log(f"device: {env['device_kind']} ({env['cpu_model']}, {env['cpu_count']} cores), jax {env['jax']}, "
        f"torch {env['torch']}")
    peak = matmul_peak(grid.peak_n, repeats=grid.repeats, min_time=max(grid.min_time, 0.05), dtype=grid.dtype)
    log(f"{grid.dtype} matmul peak (n={grid.peak_n}): {fmt_rate(peak['peak_flops_per_s'])}FLOP/s "
        f"(jax {fmt_rate(peak['jax_flops_per_s'])}, torch {fmt_rate(peak.get('torch_flops_per_s'))})")
    cases = build_cases(blocks, grid)
    peak_calls = matmul_contenders(grid.peak_n, dtype=grid.dtype)[0] if any(c.group == "large" for c in cases) else None
    results = []
    done: Dict[Any, Dict[str, Any]] = {}
    for i, case in enumerate(cases):
        # The same sizes often appear in two groups (e.g. 2 modalities of the
        # default dim in both scaling sweeps): measure once, report in both.
        key = dataclasses.replace(case, group="", config=tuple(sorted(case.config.items())))
        if key in done:
            row = {**done[key], "group": case.group}
        else:
            row = measure_case(case, grid, peak["peak_flops_per_s"], peak_calls)
            done[key] = row
        results.append(row)
        # Partial results survive an interrupted run.
        _write(out_dir, _document(grid, blocks, env, peak, results, started, complete=False), log=None)
        _log_case(log, i, len(cases), case, row)
    doc = _document(grid, blocks, env, peak, results, started, complete=True)
    _write(out_dir, doc, log=log, plots=plots)
    return doc


def _document(grid: Grid, blocks, env, peak, results, started: float, complete: bool) -> Dict[str, Any]:
    return {
        "benchmark": "fusion_throughput",
        "mode": grid.mode,
        "complete": complete,
        "environment": env,
        "grid": dataclasses.asdict(grid),
        "specs": {b: dataclasses.asdict(spec_for(b)) for b in blocks},
        "blocks": list(blocks),
        "peak": peak,
        "results": results,
        "summary": summarize(results, blocks),
        "wall_s": time.perf_counter() - started,
    }


def _write(out_dir: str, doc: Mapping[str, Any], log: Optional[Callable[[str], None]], plots: bool = False) -> None:
    write_json(os.path.join(out_dir, "fusion.json"), doc)
    with open(os.path.join(out_dir, "fusion.md"), "w") as f:
        f.write(render_markdown(doc))
    if plots:
        try:
            plot(doc, out_dir)
        except ImportError as e:
            if log:
                log(f"plots skipped: {e}")
    if log:
        log(f"wrote {out_dir}/fusion.json, fusion.md" + (", throughput.png, scaling.png" if plots else "")
            + f" in {doc['wall_s']:.0f} s")
