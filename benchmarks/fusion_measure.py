"""Timing one case: mmjax next to its PyTorch reference in interleaved rounds
(:func:`benchmarks.common.time_interleaved`), torch.compile on its own, and the
JSON row of :func:`measure_case`."""
from __future__ import annotations

import time
import traceback
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from benchmarks.common import Contender, Timing, time_calls, time_interleaved
from benchmarks.fusion_grid import Case, Grid
from benchmarks.fusion_setup import analytic_cost, make_inputs, prepare_jax, prepare_torch


def _throughput(batch: int, t: Timing) -> float:
    return batch / t.median_s


def _time_phase(jax_call: Contender, torch_calls: Optional[Mapping[int, Contender]], case: Case, grid: Grid,
                peak_calls: Optional[Mapping[str, Contender]] = None
                ) -> Tuple[Timing, Dict[int, Timing], Dict[str, float]]:
    """mmjax, every PyTorch variant of one phase and, if given, the peak matmuls,
    timed in interleaved rounds. Returns (mmjax, PyTorch by threads, matmul FLOP/s by
    implementation; empty without peak_calls)."""
    contenders = {"jax": jax_call}
    for n, c in (torch_calls or {}).items():
        contenders[f"torch@{n}"] = c
    for n, c in (peak_calls or {}).items():
        contenders[f"peak@{n}"] = c
    timings = time_interleaved(contenders, repeats=grid.repeats, min_time=grid.min_time)
    peaks = {n: 2.0 * grid.peak_n**3 / timings[f"peak@{n}"].median_s for n in (peak_calls or {})}
    return timings["jax"], {n: timings[f"torch@{n}"] for n in (torch_calls or {})}, peaks


def _measure_torch_compile(tres: Mapping[str, Any], case: Case, grid: Grid) -> Dict[str, Any]:
    """torch.compile of the reference, timed on its own (reported at small batch only)."""
    import torch

    entry: Dict[str, Any] = {}
    for phase in tres["_calls"]:
        try:
            torch._dynamo.reset()
            compiled = torch.compile(tres["_module"])
            call = tres["_makers"][phase](compiled)
            t0 = time.perf_counter()
            tres["_sync"](call())
            compile_s = time.perf_counter() - t0
            timing = time_calls(call, sync=tres["_sync"], repeats=grid.repeats, min_time=grid.min_time)
            entry[phase] = {"timing": timing.as_dict(), "examples_per_s": _throughput(case.batch, timing),
                            "compile_s": compile_s, "threads": tres["default_threads"]}
        except Exception as e:  # noqa: BLE001 - torch.compile failures are reported, not fatal
            msg = str(e).splitlines()[0][:300] if str(e) else ""
            entry[phase] = {"error": f"{type(e).__name__}: {msg}"}
    return entry


def _ratio(jax_res: Mapping[str, Any], torch_res: Mapping[str, Any], variant: str, phase: str) -> Optional[float]:
    try:
        return jax_res[phase]["examples_per_s"] / torch_res[variant][phase]["examples_per_s"]
    except (KeyError, TypeError, ZeroDivisionError):
        return None


def _time_phases(case: Case, grid: Grid, peak: float, jax_calls: Mapping[str, Contender], jres: Dict[str, Any],
                 tres: Mapping[str, Any], peak_calls: Optional[Mapping[str, Contender]]) -> Dict[str, Any]:
    """Times every phase, fills ``jres[phase]`` in place; -> the PyTorch eager entry per phase."""
    torch_calls = tres.get("_calls", {})
    eager: Dict[str, Any] = {}
    try:
        for phase, call in jax_calls.items():
            local = peak_calls if case.group == "large" else None
            jt, tt, local_peaks = _time_phase(call, torch_calls.get(phase), case, grid, local)
            jres[phase].update(timing=jt.as_dict(), examples_per_s=_throughput(case.batch, jt))
            if local_peaks:
                # The same square matmul in jax and PyTorch: how fast each framework's own
                # GEMM is on this machine, next to the block's ratio.
                jres[phase]["matmul_flops_per_s"] = local_peaks
            local_peak = max(local_peaks.values()) if local_peaks else None
            flops = jres[phase]["xla_flops"]
            if flops is not None:
                jres[phase]["flops_per_s"] = flops / jt.median_s
                jres[phase]["peak_flops_per_s"] = local_peak or peak
                jres[phase]["share_of_peak"] = jres[phase]["flops_per_s"] / (local_peak or peak)
            if tt:
                rates = {n: _throughput(case.batch, t) for n, t in tt.items()}
                best = max(rates, key=rates.get)
                eager[phase] = {"timing": tt[best].as_dict(), "examples_per_s": rates[best], "threads": best,
                                "examples_per_s_by_threads": {str(n): v for n, v in rates.items()}}
    finally:
        if "default_threads" in tres:
            import torch

            torch.set_num_threads(tres["default_threads"])
    return eager


def _torch_row(case: Case, grid: Grid, tres: Mapping[str, Any], eager: Dict[str, Any],
               jax_out: Optional[np.ndarray]) -> Dict[str, Any]:
    """The row's ``torch`` entry: device, eager and torch.compile timings, agreement with mmjax."""
    torch_row: Dict[str, Any] = {k: v for k, v in tres.items() if not k.startswith("_")}
    if eager:
        torch_row["eager"] = eager
    if case.torch_compile and tres.get("_calls", {}):
        torch_row["compile"] = _measure_torch_compile(tres, case, grid)
    torch_out = tres.get("_output")
    if jax_out is not None and torch_out is not None:
        err = float(np.max(np.abs(jax_out - torch_out)) / (np.max(np.abs(torch_out)) + 1e-12))
        torch_row["max_rel_diff_vs_jax"] = err
    return torch_row


def measure_case(case: Case, grid: Grid, peak: float,
                 peak_calls: Optional[Mapping[str, Contender]] = None) -> Dict[str, Any]:
    """Everything about one case, as a JSON-ready dict (errors recorded, not raised).

    ``peak`` is the run's matmul peak (FLOP/s). For the ``large`` cases, where
    the share of peak is the target, ``peak_calls`` (:func:`matmul_contenders`)
    are timed in the same rounds as the block and the share is taken of that
    contemporaneous peak (``peak_flops_per_s`` in the phase's entry).
    """
    row: Dict[str, Any] = {
        "block": case.block,
        "group": case.group,
        "batch": case.batch,
        "dims": list(case.dims),
        "num_modalities": len(case.dims),
        "out_dim": case.out_dim,
        "token_length": case.token_length,
    }
    inputs = make_inputs(case)
    try:
        jres = prepare_jax(case, grid, inputs)
    except Exception as e:  # noqa: BLE001 - one failing block must not sink the run
        row["error"] = f"{type(e).__name__}: {e}"
        row["traceback"] = traceback.format_exc(limit=4)
        return row
    params = jres.pop("_params")
    jax_out = jres.pop("_output", None)
    jax_calls = jres.pop("_calls")
    row["config"] = jres.pop("config")
    row["params"] = jres.pop("params")
    row["analytic"] = analytic_cost(case, row["config"])
    tres: Dict[str, Any] = prepare_torch(case, grid, inputs, params) if case.torch else {}
    eager = _time_phases(case, grid, peak, jax_calls, jres, tres, peak_calls)
    row["jax"] = jres
    if case.torch:
        torch_row = _torch_row(case, grid, tres, eager, jax_out)
        row["torch"] = torch_row
        row["ratio"] = {
            f"{phase}_{variant}": _ratio(jres, torch_row, variant, phase)
            for variant in ("eager", "compile")
            for phase in ("fwd", "train")
        }
    return row
