"""Timing, XLA cost/memory extraction and run metadata shared by the benchmarks.

Conventions used by every benchmark in this package:

* steady state only: a function is compiled (and its compile time recorded
  separately), warmed up once, then timed in ``repeats`` repeats of ``iters``
  calls each; the reported time per call is the median over repeats;
* functions that are compared with each other (mmjax vs PyTorch) are timed
  in interleaved rounds (:func:`time_interleaved`), so the machine's drift
  does not decide the ratio;
* JAX work is asynchronous, so each repeat ends with ``jax.block_until_ready``
  on the last result (PyTorch on CPU is synchronous, so nothing to wait for);
* FLOPs count one multiply-add as 2 FLOPs, the convention of both
  ``compiled.cost_analysis()`` and :func:`mmjax.fusion.cost`.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import statistics
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple


# Compute dtypes the benchmarks measure (parameters stay float32).
DTYPES = ("float32", "bfloat16")


class BenchmarkConfigError(ValueError):
    """A benchmark was asked for something it cannot run (unknown block, bad grid)."""


@dataclasses.dataclass(frozen=True)
class Timing:
    """Seconds per call: median and min over ``repeats`` repeats of ``iters`` calls."""

    median_s: float
    min_s: float
    repeats: int
    iters: int

    def as_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def time_calls(
    call: Callable[[], Any],
    *,
    sync: Callable[[Any], Any] = lambda x: x,
    repeats: int = 5,
    min_time: float = 0.05,
    max_iters: int = 10_000,
) -> Timing:
    """Times ``call()`` in steady state.

    One untimed warm-up call, then the number of calls per repeat is chosen so
    a repeat lasts about ``min_time`` seconds (short calls are dominated by
    timer resolution and dispatch jitter otherwise).
    """
    if repeats < 1:
        raise BenchmarkConfigError(f"repeats must be >= 1, got {repeats}")
    sync(call())
    t0 = time.perf_counter()
    sync(call())
    one = max(time.perf_counter() - t0, 1e-7)
    iters = int(min(max_iters, max(1, round(min_time / one))))
    per_call: List[float] = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = None
        for _ in range(iters):
            out = call()
        sync(out)
        per_call.append((time.perf_counter() - t0) / iters)
    return Timing(statistics.median(per_call), min(per_call), repeats, iters)


@dataclasses.dataclass(frozen=True)
class Contender:
    """One function in a head-to-head timing (see :func:`time_interleaved`).

    Attributes:
      call: the function, called with no arguments.
      sync: waits for ``call``'s result (``jax.block_until_ready``; identity for
        synchronous frameworks).
      before: run before each timed block of calls, outside the timing (e.g.
        set a thread count).
    """

    call: Callable[[], Any]
    sync: Callable[[Any], Any] = lambda x: x
    before: Optional[Callable[[], None]] = None


def time_interleaved(
    contenders: Dict[str, Contender],
    *,
    repeats: int = 5,
    min_time: float = 0.05,
    max_iters: int = 10_000,
) -> Dict[str, Timing]:
    """Times several functions in alternating rounds, for ratios that are fair.

    On a shared machine the speed drifts by tens of percent over seconds
    (other tenants, frequency scaling). Timed one after the other, whichever
    ran in the slow stretch loses; here each of ``repeats`` rounds times every
    contender once (``iters`` calls sized to about ``min_time`` seconds, the
    order rotated each round), so a drift hits all of them alike. The median
    over rounds is reported, as in :func:`time_calls`.
    """
    if repeats < 1:
        raise BenchmarkConfigError(f"repeats must be >= 1, got {repeats}")
    if not contenders:
        raise BenchmarkConfigError("time_interleaved needs at least one contender")
    names = list(contenders)
    iters: Dict[str, int] = {}
    for n in names:
        c = contenders[n]
        if c.before is not None:
            c.before()
        c.sync(c.call())  # warm-up
        t0 = time.perf_counter()
        c.sync(c.call())
        one = max(time.perf_counter() - t0, 1e-7)
        iters[n] = int(min(max_iters, max(1, round(min_time / one))))
    per_call: Dict[str, List[float]] = {n: [] for n in names}
    for r in range(repeats):
        for n in names[r % len(names):] + names[:r % len(names)]:
            c = contenders[n]
            if c.before is not None:
                c.before()
            t0 = time.perf_counter()
            out = None
            for _ in range(iters[n]):
                out = c.call()
            c.sync(out)
            per_call[n].append((time.perf_counter() - t0) / iters[n])
    return {n: Timing(statistics.median(v), min(v), repeats, iters[n]) for n, v in per_call.items()}


def xla_flops(compiled: Any) -> Optional[float]:
    """FLOPs XLA counted for a compiled executable, or None if it reports none.

    ``Compiled.cost_analysis()`` returns a dict in current jax (0.4.30+) and a
    list with one dict per device program in older releases; both are handled.
    """
    try:
        analysis = compiled.cost_analysis()
    except Exception:  # some backends do not implement it
        return None
    if analysis is None:
        return None
    if isinstance(analysis, (list, tuple)):
        values = [a.get("flops") for a in analysis if isinstance(a, dict) and a.get("flops") is not None]
        return float(sum(values)) if values else None
    flops = analysis.get("flops")
    return None if flops is None else float(flops)


def memory_bytes(compiled: Any) -> Optional[Dict[str, int]]:
    """temp / argument / output bytes of a compiled executable and their total."""
    try:
        stats = compiled.memory_analysis()
    except Exception:
        return None
    if stats is None:
        return None
    out = {
        "temp": int(stats.temp_size_in_bytes),
        "argument": int(stats.argument_size_in_bytes),
        "output": int(stats.output_size_in_bytes),
    }
    out["total"] = out["temp"] + out["argument"] + out["output"]
    return out


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(module: str) -> Optional[str]:
    try:
        mod = __import__(module)
    except Exception:
        return None
    return getattr(mod, "__version__", None)


def environment() -> Dict[str, Any]:
    """Device, library versions, thread settings, load and date of this run."""
    import jax

    dev = jax.devices()[0]
    env: Dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": dev.platform,
        "device_kind": dev.device_kind,
        "num_devices": jax.device_count(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": _version("jaxlib"),
        "flax": _version("flax"),
        "numpy": _version("numpy"),
        "torch": _version("torch"),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }
    try:
        import torch

        env["torch_threads"] = torch.get_num_threads()
    except Exception:
        env["torch_threads"] = None
    return env


def torch_device() -> str:
    """Where PyTorch runs next to jax: the GPU when jax runs on one and torch sees it."""
    import jax
    import torch

    if jax.devices()[0].platform == "gpu" and torch.cuda.is_available():
        return "cuda"
    return "cpu"


def matmul_contenders(n: int = 1024, *, dtype: str = "float32", torch_too: bool = True
                      ) -> Tuple[Dict[str, Contender], Optional[str]]:
    """Square (n, n) @ (n, n) matmuls in ``dtype``: "jax", and "torch" on the same
    device (the GPU when jax runs on one) if PyTorch is installed.

    Returns (contenders, why torch is missing or None). Each call is 2 n^3 FLOPs.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(0)
    a_np = rng.standard_normal((n, n), dtype=np.float32)
    b_np = rng.standard_normal((n, n), dtype=np.float32)
    a, b = jnp.asarray(a_np, dtype), jnp.asarray(b_np, dtype)
    mm = jax.jit(jnp.matmul).lower(a, b).compile()
    contenders = {"jax": Contender(lambda: mm(a, b), sync=jax.block_until_ready)}
    if not torch_too:
        return contenders, None
    try:
        import torch
    except ImportError as e:
        return contenders, str(e)
    device = torch_device()
    ta = torch.from_numpy(a_np).to(device, getattr(torch, dtype))
    tb = torch.from_numpy(b_np).to(device, getattr(torch, dtype))
    sync = (lambda y: torch.cuda.synchronize()) if device == "cuda" else (lambda y: y)
    # Its own thread count every time: contenders timed beside it may change torch's.
    threads = torch.get_num_threads()
    contenders["torch"] = Contender(lambda: torch.mm(ta, tb), sync=sync,
                                    before=lambda: torch.set_num_threads(threads))
    return contenders, None


def matmul_peak(n: int = 1024, *, repeats: int = 5, min_time: float = 0.2, torch_too: bool = True,
                dtype: str = "float32") -> Dict[str, Any]:
    """This machine's matmul throughput, measured now: the peak that achieved
    FLOP/s are compared with.

    :func:`matmul_contenders` timed in interleaved rounds; ``peak_flops_per_s``
    is the faster of jax and PyTorch, so the share of peak is never flattered
    by a slow implementation.
    """
    contenders, torch_error = matmul_contenders(n, dtype=dtype, torch_too=torch_too)
    timings = time_interleaved(contenders, repeats=repeats, min_time=min_time)
    flops = 2.0 * n**3
    out: Dict[str, Any] = {"n": n, "dtype": dtype, "jax_flops_per_s": flops / timings["jax"].median_s,
                           "jax_timing": timings["jax"].as_dict()}
    best = out["jax_flops_per_s"]
    if "torch" in timings:
        out["torch_flops_per_s"] = flops / timings["torch"].median_s
        out["torch_timing"] = timings["torch"].as_dict()
        best = max(best, out["torch_flops_per_s"])
    elif torch_too:
        out["torch_flops_per_s"] = None
        out["torch_error"] = torch_error
    out["peak_flops_per_s"] = best
    return out


def nested_get(d: Any, *keys: str) -> Any:
    """``d[k0][k1]...``, or None where a level is missing or not a mapping (report tables)."""
    for k in keys:
        if not isinstance(d, Mapping) or k not in d:
            return None
        d = d[k]
    return d


def write_json(path: str, data: Any) -> None:
    """Writes ``data`` as indented JSON (atomically: a reader never sees half a file)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=False, default=_json_default)
        f.write("\n")
    os.replace(tmp, path)


def _json_default(obj: Any) -> Any:
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
    except ImportError:
        pass
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    return str(obj)


def fmt_rate(x: Optional[float]) -> str:
    """Human-readable rate: 1.23M, 45.6k, 789."""
    if x is None or x != x:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def fmt_bytes(x: Optional[float]) -> str:
    if x is None:
        return "-"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{int(x)} B"
