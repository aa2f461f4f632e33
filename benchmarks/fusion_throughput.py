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
calls it), which writes DIR/fusion.json, DIR/fusion.md and the plots.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
import traceback
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from benchmarks.common import (
    DTYPES,
    BenchmarkConfigError,
    Contender,
    Timing,
    environment,
    fmt_bytes,
    fmt_rate,
    matmul_contenders,
    matmul_peak,
    memory_bytes,
    nested_get as _get,
    time_calls,
    torch_device,
    time_interleaved,
    write_json,
    xla_flops,
)
# Per-block inputs, configs and sources (all 27 blocks) live in their own file.
from benchmarks.fusion_specs import SPECS, BlockSpec, render_catalogue, spec_for  # noqa: F401 (SPECS re-exported)

# The LMF paper's reported speed-up of low-rank fusion over TFN (Liu et al.
# 2018, "Efficient Low-rank Multimodal Fusion with Modality-Specific
# Factors"): about 3.3x in training and 1.9x at inference, on their tasks,
# sizes and hardware. Quoted for context only.
LMF_PAPER_SPEEDUP = {"train": 3.3, "inference": 1.9}

# Targets (computed and reported, never asserted).
TARGET_RATIO = 1.0           # mmjax examples/s >= PyTorch's at the same sizes
TARGET_SMALL_BATCH_RATIO = 1.2  # "clearly faster" at the smallest batch
TARGET_PEAK_SHARE = 0.60     # matmul-heavy blocks at large sizes

MATMUL_HEAVY = ("concat", "tensor", "low_rank", "bilinear")


@dataclasses.dataclass(frozen=True)
class Grid:
    """Sizes to measure. Every tuple is swept independently around the defaults."""

    batches: Tuple[int, ...] = (1, 8, 64, 512, 4096)
    batch_dims: Tuple[int, ...] = (64, 32)       # per-modality dims for the batch sweep
    out_dim: int = 64
    token_length: int = 16                        # attention blocks in the batch sweep
    scaling_batch: int = 64
    scaling_modalities: Tuple[int, ...] = (2, 3, 4)
    scaling_dim: int = 16                         # per-modality dim of the modalities sweep
    scaling_dims: Tuple[int, ...] = (16, 32, 64, 128, 256)
    scaling_out_dim: int = 32
    token_lengths: Tuple[int, ...] = (16, 64, 256)
    token_batch: int = 8
    large: bool = True
    repeats: int = 5
    min_time: float = 0.1
    torch_compile: bool = True
    torch_compile_batches: Optional[Tuple[int, ...]] = None  # None: every batch-sweep case
    scaling_forward: bool = True                  # also time the forward pass in scaling cases
    peak_n: int = 2048
    max_token_batch: Optional[int] = None         # cap on the batch sweep for the attention blocks
    dtype: str = "float32"                        # compute dtype: float32 | bfloat16 (params stay float32)
    mode: str = "full"


FULL = Grid()
QUICK = Grid(
    batches=(8, 512),
    scaling_modalities=(2, 4),
    scaling_dims=(16, 64),
    token_lengths=(16, 64),
    repeats=5,
    min_time=0.03,
    torch_compile=False,
    scaling_forward=False,
    peak_n=1024,
    max_token_batch=64,
    mode="quick",
)
# The test suite's configuration: one small case per block, one repeat.
TINY = Grid(
    batches=(4,),
    batch_dims=(8, 6),
    out_dim=8,
    token_length=4,
    scaling_batch=4,
    scaling_modalities=(),
    scaling_dim=4,
    scaling_dims=(),
    scaling_out_dim=4,
    token_lengths=(),
    token_batch=2,
    large=False,
    repeats=1,
    min_time=0.0,
    torch_compile=False,
    scaling_forward=False,
    peak_n=128,
    mode="tiny",
)


@dataclasses.dataclass(frozen=True)
class Case:
    """One measurement: a block at one set of sizes."""

    block: str
    group: str                  # batch | modalities | dims | tokens | large
    batch: int
    dims: Tuple[int, ...]       # per modality, sorted-name order (m0, m1, ...)
    out_dim: int
    token_length: Optional[int]  # None: pooled (B, D) inputs
    config: Mapping[str, Any]
    torch: bool = True           # also run the PyTorch reference
    torch_compile: bool = False
    forward: bool = True         # time the forward pass (train is always timed)

    @property
    def names(self) -> Tuple[str, ...]:
        return tuple(f"m{i}" for i in range(len(self.dims)))


def _large_case(block: str) -> Optional[Dict[str, Any]]:
    """Sizes where the matmul-heavy blocks are dominated by one big matmul."""
    return {
        "concat": dict(batch=1024, dims=(1024, 1024), out_dim=1024, config={}),
        "tensor": dict(batch=1024, dims=(32, 32), out_dim=512, config={}),
        "low_rank": dict(batch=1024, dims=(512, 512), out_dim=512, config={"rank": 8}),
        "bilinear": dict(batch=1024, dims=(512, 512), out_dim=512, config={"factor_dim": 5}),
    }.get(block)


def _fits(spec: BlockSpec, dims: Sequence[int], out_dim: int) -> bool:
    if spec.max_modalities is not None and len(dims) > spec.max_modalities:
        return False
    return spec.max_product is None or math.prod(d + 1 for d in dims) * out_dim <= spec.max_product


def build_cases(blocks: Sequence[str], grid: Grid) -> List[Case]:
    """The measurements for ``blocks`` on ``grid``, in run order."""
    cases: List[Case] = []
    for name in blocks:
        spec = spec_for(name)
        tl = grid.token_length if spec.tokens else None
        cfg = dict(spec.config)
        batches = grid.batches
        if spec.tokens and grid.max_token_batch is not None:
            batches = tuple(sorted({min(b, grid.max_token_batch) for b in batches}))
        for b in batches:
            compile_here = grid.torch_compile and (
                grid.torch_compile_batches is None or b in grid.torch_compile_batches
            )
            cases.append(Case(name, "batch", b, tuple(grid.batch_dims), grid.out_dim, tl, cfg,
                              torch_compile=compile_here))
        seen = set()
        for m in grid.scaling_modalities:
            dims = (grid.scaling_dim,) * m
            if _fits(spec, dims, grid.scaling_out_dim):
                seen.add(dims)
                cases.append(Case(name, "modalities", grid.scaling_batch, dims, grid.scaling_out_dim, tl, cfg,
                                  torch=False, forward=grid.scaling_forward))
        for d in grid.scaling_dims:
            dims = (d, d)
            if _fits(spec, dims, grid.scaling_out_dim):
                cases.append(Case(name, "dims", grid.scaling_batch, dims, grid.scaling_out_dim, tl, cfg,
                                  torch=False, forward=grid.scaling_forward))
        if spec.tokens:
            for t in grid.token_lengths:
                cases.append(Case(name, "tokens", grid.token_batch, tuple(grid.batch_dims), grid.out_dim, t, cfg))
        if grid.large and name in MATMUL_HEAVY:
            large = _large_case(name)
            cases.append(Case(name, "large", large["batch"], large["dims"], large["out_dim"], None,
                              {**cfg, **large["config"]}))
    return cases


# ----------------------------------------------------------------------------- measurement


def _block_config(name: str, case: Case) -> Dict[str, Any]:
    """``out_dim`` plus the case's config, restricted to fields the block has."""
    import mmjax.fusion as fusion

    cls = fusion.registry.FUSION.get(name)
    cfg = {"out_dim": case.out_dim, **case.config}
    if dataclasses.is_dataclass(cls):
        fields = {f.name for f in dataclasses.fields(cls)}
        cfg = {k: v for k, v in cfg.items() if k in fields}
    return cfg


def make_inputs(case: Case, seed: int = 0) -> Dict[str, np.ndarray]:
    """modality -> float32 (B, D_m) or (B, T, D_m) standard-normal features."""
    rng = np.random.default_rng(seed)
    out = {}
    for n, d in zip(case.names, case.dims):
        shape = (case.batch, d) if case.token_length is None else (case.batch, case.token_length, d)
        out[n] = rng.standard_normal(shape, dtype=np.float32)
    return out


def _analytic_cost(case: Case, block_cfg: Mapping[str, Any]) -> Dict[str, Any]:
    import mmjax.fusion as fusion

    cfg = {k: v for k, v in block_cfg.items() if k not in ("out_dim", "dtype", "param_dtype")}
    if case.token_length is not None:
        cfg["token_lengths"] = [case.token_length] * len(case.dims)
    try:
        c = fusion.cost(case.block, list(case.dims), case.out_dim, **cfg)
    except TypeError:
        # A cost model that does not take token_lengths.
        cfg.pop("token_lengths", None)
        try:
            c = fusion.cost(case.block, list(case.dims), case.out_dim, **cfg)
        except Exception as e:  # noqa: BLE001 - reported, not fatal
            return {"error": f"{type(e).__name__}: {e}"}
    except Exception as e:  # noqa: BLE001
        return {"error": f"{type(e).__name__}: {e}"}
    return {"params": int(c.params), "flops_per_example": int(c.flops)}


def _throughput(batch: int, t: Timing) -> float:
    return batch / t.median_s


def random_params(block: Any, inputs: Mapping[str, np.ndarray], seed: int = 0) -> Any:
    """Variables of ``block`` for ``inputs``, drawn with numpy: N(0, 1/fan_in) with
    fan_in = prod(shape[:-1]) for weights, N(0, 0.1^2) for vectors (biases, norm
    scales, modality logits).

    Shapes come from ``jax.eval_shape(block.init, ...)``, which traces but
    compiles nothing: a jitted ``init`` costs seconds of compile per case for
    values that timing does not depend on. Every weight is random, biases
    included, so the PyTorch agreement checks also exercise bias layouts that
    a zero init would hide.
    """
    import flax.linen as nn
    import jax

    shapes = nn.unbox(jax.eval_shape(block.init, jax.random.key(0), inputs))
    rng = np.random.default_rng(seed)

    def draw(s):
        if not np.issubdtype(s.dtype, np.floating):
            return np.zeros(s.shape, s.dtype)
        if len(s.shape) >= 2:
            std = 1.0 / math.sqrt(max(math.prod(s.shape[:-1]), 1))
        else:
            std = 0.1
        return (std * rng.standard_normal(s.shape)).astype(s.dtype)

    return jax.tree.map(draw, shapes)


def _dtype(name: str):
    import jax.numpy as jnp

    if name not in DTYPES:
        raise BenchmarkConfigError(f"dtype must be one of {DTYPES}, got {name!r}")
    return getattr(jnp, name)


def prepare_jax(case: Case, grid: Grid, inputs: Mapping[str, np.ndarray]) -> Dict[str, Any]:
    """Compiles the mmjax block's forward and forward+backward (timed later, next to PyTorch).

    With ``grid.dtype == "bfloat16"`` the block computes in bf16 on bf16 inputs
    and keeps float32 parameters (mixed precision, as in training).
    """
    import jax
    import jax.numpy as jnp
    import mmjax.fusion as fusion

    dtype = _dtype(grid.dtype)
    cfg = _block_config(case.block, case)
    block = fusion.create(case.block, **cfg, **_dtype_config(case.block, dtype))
    x = {k: jnp.asarray(v, dtype) for k, v in inputs.items()}
    t0 = time.perf_counter()
    params = jax.tree.map(jnp.asarray, random_params(block, inputs))
    init_s = time.perf_counter() - t0

    def forward(p, xs):
        return block.apply(p, xs)

    def loss(p, xs):
        out = block.apply(p, xs)
        return jnp.mean(jnp.square(out.astype(jnp.float32)))

    out: Dict[str, Any] = {
        "config": {k: v for k, v in cfg.items()},
        "params": int(sum(np.size(l) for l in jax.tree.leaves(params))),
        "param_init_s": init_s,
        "_params": params,
        "_calls": {},
    }
    phases = [("train", jax.grad(loss))]
    if case.forward:
        phases.insert(0, ("fwd", forward))
    for phase, fn in phases:
        t0 = time.perf_counter()
        compiled = jax.jit(fn).lower(params, x).compile()
        compile_s = time.perf_counter() - t0
        flops = xla_flops(compiled)
        out[phase] = {
            "compile_s": compile_s,
            "xla_flops": flops,
            "xla_flops_per_example": None if flops is None else flops / case.batch,
            "memory": memory_bytes(compiled),
        }
        out["_calls"][phase] = Contender(functools.partial(compiled, params, x), sync=jax.block_until_ready)
        if phase == "fwd":
            out["_output"] = np.asarray(compiled(params, x), np.float32)
    return out


def _dtype_config(name: str, dtype: Any) -> Dict[str, Any]:
    import jax.numpy as jnp
    import mmjax.fusion as fusion

    cls = fusion.registry.FUSION.get(name)
    if dtype == jnp.float32 or not dataclasses.is_dataclass(cls):
        return {}
    return {"dtype": dtype} if "dtype" in {f.name for f in dataclasses.fields(cls)} else {}


def prepare_torch(case: Case, grid: Grid, inputs: Mapping[str, np.ndarray], params: Any) -> Dict[str, Any]:
    """Builds the PyTorch reference on the same weights; returns its eager contenders per phase.

    On CPU each phase gets one contender per intra-op thread count (the
    default and 1): PyTorch's pool synchronises threads on every op, so for
    tiny ops or on a busy machine one thread can be several times faster. The
    faster one is the reference, so ratios never flatter mmjax. bfloat16 runs
    under ``torch.autocast`` with float32 parameters, as mmjax does.
    """
    try:
        import torch

        from benchmarks import reference_torch as ref
    except ImportError as e:
        return {"error": f"PyTorch not available: {e}"}
    if not ref.has_reference(case.block):
        return {"error": f"no PyTorch reference for {case.block!r}"}
    cfg = _block_config(case.block, case)
    cfg.pop("out_dim", None)
    dims = dict(zip(case.names, case.dims))
    device = torch_device()
    try:
        module = ref.build_reference(case.block, dims, case.out_dim, **cfg)
        ref.load_from_flax(module, params)
    except Exception as e:  # noqa: BLE001 - reported per case
        return {"error": f"{type(e).__name__}: {e}"}
    module = module.to(device).eval()  # no dropout is configured; eval() keeps any at identity
    xs = [t.to(device) for t in ref.to_torch_inputs(inputs)]
    bf16 = grid.dtype == "bfloat16"
    if bf16:
        xs = [t.to(torch.bfloat16) for t in xs]

    def autocast():
        return torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16)

    def run_fwd(m):
        def call():
            with torch.no_grad(), autocast():
                return m(*xs)
        return call

    def run_train(m):
        trainable = [p for p in module.parameters() if p.requires_grad]

        def call():
            for p in trainable:
                p.grad = None
            with autocast():
                y = m(*xs)
            loss = y.float().square().mean()
            loss.backward()
            return loss
        return call

    sync = (lambda y: torch.cuda.synchronize()) if device == "cuda" else (lambda y: y)
    default_threads = torch.get_num_threads()
    threads = sorted({default_threads, 1}, reverse=True) if device == "cpu" else [default_threads]
    calls: Dict[str, Dict[int, Contender]] = {}
    makers = {"fwd": run_fwd, "train": run_train}
    for phase in (["fwd"] if case.forward else []) + ["train"]:
        calls[phase] = {
            n: Contender(makers[phase](module), sync=sync, before=functools.partial(torch.set_num_threads, n))
            for n in threads
        }
    with torch.no_grad(), autocast():
        output = module(*xs).float().cpu().numpy()
    return {"device": device, "default_threads": default_threads, "_calls": calls, "_output": output,
            "_module": module, "_makers": makers, "_sync": sync}


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
    row["analytic"] = _analytic_cost(case, row["config"])
    tres: Dict[str, Any] = prepare_torch(case, grid, inputs, params) if case.torch else {}
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
    row["jax"] = jres
    if case.torch:
        torch_row: Dict[str, Any] = {k: v for k, v in tres.items() if not k.startswith("_")}
        if eager:
            torch_row["eager"] = eager
        if case.torch_compile and torch_calls:
            torch_row["compile"] = _measure_torch_compile(tres, case, grid)
        torch_out = tres.get("_output")
        if jax_out is not None and torch_out is not None:
            err = float(np.max(np.abs(jax_out - torch_out)) / (np.max(np.abs(torch_out)) + 1e-12))
            torch_row["max_rel_diff_vs_jax"] = err
        row["torch"] = torch_row
        row["ratio"] = {
            f"{phase}_{variant}": _ratio(jres, torch_row, variant, phase)
            for variant in ("eager", "compile")
            for phase in ("fwd", "train")
        }
    return row


# ----------------------------------------------------------------------------- summary


def _rows(results: Iterable[Mapping[str, Any]], group: str, block: Optional[str] = None):
    return [r for r in results if r["group"] == group and "error" not in r and (block is None or r["block"] == block)]


def summarize(results: Sequence[Mapping[str, Any]], blocks: Sequence[str]) -> Dict[str, Any]:
    """Targets, the low_rank / tensor speed-up and the scaling exponents."""
    misses: List[str] = []
    met: List[str] = []
    for name in blocks:
        rows = sorted(_rows(results, "batch", name) + _rows(results, "tokens", name) + _rows(results, "large", name),
                      key=lambda r: r["batch"])
        rows = [r for r in rows if "ratio" in r]
        if not rows:
            misses.append(f"{name}: no PyTorch comparison available")
            continue
        for r in rows:
            for key, v in r["ratio"].items():
                if v is None:
                    continue
                where = (f"{name} {key} batch={r['batch']}" + (f" T={r['token_length']}" if r["token_length"] else "")
                         + (f" dims={r['dims']} out={r['out_dim']} (large)" if r["group"] == "large" else ""))
                if v < TARGET_RATIO:
                    misses.append(f"{where}: mmjax/PyTorch = {v:.2f} (< {TARGET_RATIO})")
        small = rows[0]
        for key in ("fwd_eager", "train_eager"):
            v = small["ratio"].get(key)
            if v is None:
                continue
            msg = f"{name} {key} at the smallest batch ({small['batch']}): {v:.2f}x"
            (met if v >= TARGET_SMALL_BATCH_RATIO else misses).append(
                msg + ("" if v >= TARGET_SMALL_BATCH_RATIO else f" (< {TARGET_SMALL_BATCH_RATIO}x: not clearly faster)")
            )
    peak_report = []
    for r in _rows(results, "large"):
        for phase in ("fwd", "train"):
            share = r["jax"].get(phase, {}).get("share_of_peak")
            if share is None:
                continue
            peak_report.append({"block": r["block"], "phase": phase, "share_of_peak": share})
            msg = f"{r['block']} {phase} at large sizes: {100 * share:.0f}% of matmul peak"
            (met if share >= TARGET_PEAK_SHARE else misses).append(
                msg + ("" if share >= TARGET_PEAK_SHARE else f" (< {100 * TARGET_PEAK_SHARE:.0f}%)")
            )

    # low_rank over tensor at identical sizes (both measured in the same groups).
    speedups = []
    for group in ("batch", "modalities", "dims"):
        lr = {(r["batch"], tuple(r["dims"]), r["out_dim"]): r for r in _rows(results, group, "low_rank")}
        for r in _rows(results, group, "tensor"):
            key = (r["batch"], tuple(r["dims"]), r["out_dim"])
            if key not in lr:
                continue
            s = {"group": group, "batch": key[0], "dims": list(key[1]), "out_dim": key[2]}
            for phase in ("fwd", "train"):
                if phase in r["jax"] and phase in lr[key]["jax"]:
                    s[phase] = lr[key]["jax"][phase]["examples_per_s"] / r["jax"][phase]["examples_per_s"]
            s["params_ratio"] = r["params"] / max(lr[key]["params"], 1)
            speedups.append(s)

    # Growth exponents: slope of log(analytic FLOPs) vs log(dim) at 2 modalities.
    growth = {}
    for name in blocks:
        rows = [r for r in _rows(results, "dims", name) if "flops_per_example" in r.get("analytic", {})]
        if len(rows) >= 2:
            d = np.log([r["dims"][0] for r in rows])
            f = np.log([max(r["analytic"]["flops_per_example"], 1) for r in rows])
            growth[name] = {"flops_vs_dim_exponent": float(np.polyfit(d, f, 1)[0])}
        rows = [r for r in _rows(results, "modalities", name) if "flops_per_example" in r.get("analytic", {})]
        if len(rows) >= 2:
            rows = sorted(rows, key=lambda r: r["num_modalities"])
            growth.setdefault(name, {})["flops_per_added_modality"] = float(
                (rows[-1]["analytic"]["flops_per_example"] / max(rows[0]["analytic"]["flops_per_example"], 1))
                ** (1 / (rows[-1]["num_modalities"] - rows[0]["num_modalities"]))
            )
    return {
        "targets": {
            "ratio_at_least": TARGET_RATIO,
            "small_batch_ratio_at_least": TARGET_SMALL_BATCH_RATIO,
            "matmul_peak_share_at_least": TARGET_PEAK_SHARE,
            "met": met,
            "missed": misses,
        },
        "peak_shares": peak_report,
        "low_rank_over_tensor": speedups,
        "lmf_paper_speedup": LMF_PAPER_SPEEDUP,
        "growth": growth,
    }


# ----------------------------------------------------------------------------- driver


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
    import mmjax.fusion as fusion

    known = fusion.names()
    blocks = list(known if blocks is None else blocks)
    unknown = [b for b in blocks if b not in known]
    if unknown:
        raise BenchmarkConfigError(f"unknown fusion block(s) {unknown}; registered: {known}")
    if not blocks:
        raise BenchmarkConfigError("no fusion blocks to benchmark")
    grid = grid or (QUICK if quick else FULL)
    _dtype(grid.dtype)
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
        if "error" in row:
            log(f"[{i + 1}/{len(cases)}] {case.block} {case.group} B={case.batch} dims={case.dims}: "
                f"ERROR {row['error']}")
        else:
            tr = row["jax"]["train"]["examples_per_s"]
            ratio = row.get("ratio", {}).get("train_eager")
            log(f"[{i + 1}/{len(cases)}] {case.block} {case.group} B={case.batch} dims={case.dims}"
                + (f" T={case.token_length}" if case.token_length else "")
                + f": train {fmt_rate(tr)} ex/s" + (f", x{ratio:.2f} vs torch" if ratio else ""))
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


# ----------------------------------------------------------------------------- report


def _x(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.2f}"


def _pct(v: Optional[float]) -> str:
    return "-" if v is None else f"{100 * v:.0f}%"


def _torch_cell(row: Mapping[str, Any], variant: str, phase: str) -> str:
    e = _get(row, "torch", variant, phase)
    if e is None:
        err = _get(row, "torch", "error")
        return "n/a" if err else "-"
    if "error" in e:
        return "fail"
    return fmt_rate(e["examples_per_s"])


def _torch_device_of(results: Sequence[Mapping[str, Any]]) -> str:
    devices = sorted({r["torch"]["device"] for r in results if _get(r, "torch", "device")})
    return ", ".join(devices) or "-"


def render_markdown(doc: Mapping[str, Any]) -> str:
    """The tables of fusion.md."""
    env, peak, results, summary = doc["environment"], doc["peak"], doc["results"], doc["summary"]
    lines = [
        "# Fusion block benchmark",
        "",
        f"- date: {env['date']}; mode: {doc['mode']}; wall time {doc.get('wall_s', 0):.0f} s"
        + ("" if doc.get("complete", True) else
           f"; **PARTIAL: {len(results)} measurements, the run was stopped before the end of its grid**"),
        f"- device: {env['device_kind']} ({env['platform']}), {env['cpu_model']}, {env['cpu_count']} cores, "
        f"load average at start {env.get('load_average')}",
        f"- versions: jax {env['jax']}, jaxlib {env['jaxlib']}, flax {env['flax']}, torch {env['torch']}, "
        f"numpy {env['numpy']}, python {env['python']}",
        f"- PyTorch eager is timed with {env.get('torch_threads')} (default) and 1 intra-op threads and the faster "
        "is reported (see `threads` in fusion.json); torch.compile uses the default",
        f"- {peak.get('dtype', 'float32')} matmul peak measured in this run (n={peak['n']}): "
        f"**{fmt_rate(peak['peak_flops_per_s'])}FLOP/s** "
        f"(jax {fmt_rate(peak['jax_flops_per_s'])}, torch {fmt_rate(peak.get('torch_flops_per_s'))})",
        f"- compute dtype {doc['grid'].get('dtype', 'float32')} (parameters float32); PyTorch on "
        f"{_torch_device_of(results)}",
        "- examples/s are steady state (compile excluded), median of rounds in which mmjax and PyTorch "
        "are timed in turn (so the machine's drift hits both alike); train = forward + backward "
        "(gradient of mean(out^2) w.r.t. params); ratio = mmjax / PyTorch examples/s (> 1: mmjax faster)",
        "",
        *render_catalogue(doc),
        "",
        "## Throughput vs batch (two modalities, dims "
        f"{doc['grid']['batch_dims']}, out_dim {doc['grid']['out_dim']}; attention blocks T={doc['grid']['token_length']})",
        "",
        "| block | batch | params | fwd mmjax | fwd torch | fwd torch.compile | fwd ratio | train mmjax | train torch "
        "| train torch.compile | train ratio | compile s (fwd/train) | train memory |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r["group"] != "batch":
            continue
        if "error" in r:
            lines.append(f"| {r['block']} | {r['batch']} | error: {r['error'][:80]} |" + " |" * 10)
            continue
        j = r["jax"]
        lines.append(
            f"| {r['block']} | {r['batch']} | {r['params']:,} | {fmt_rate(_get(j, 'fwd', 'examples_per_s'))} "
            f"| {_torch_cell(r, 'eager', 'fwd')} | {_torch_cell(r, 'compile', 'fwd')} | {_x(_get(r, 'ratio', 'fwd_eager'))} "
            f"| {fmt_rate(j['train']['examples_per_s'])} | {_torch_cell(r, 'eager', 'train')} "
            f"| {_torch_cell(r, 'compile', 'train')} | {_x(_get(r, 'ratio', 'train_eager'))} "
            f"| {_x(_get(j, 'fwd', 'compile_s'))}/{_x(j['train']['compile_s'])} "
            f"| {fmt_bytes(_get(j, 'train', 'memory', 'total'))} |"
        )
    lines += ["", "torch.compile ratios (mmjax / compiled PyTorch), where measured:", ""]
    any_compile = False
    for r in results:
        fc, tc = _get(r, "ratio", "fwd_compile"), _get(r, "ratio", "train_compile")
        if fc is not None or tc is not None:
            any_compile = True
            lines.append(f"- {r['block']} batch {r['batch']}: fwd {_x(fc)}, train {_x(tc)}")
        for phase in ("fwd", "train"):
            err = _get(r, "torch", "compile", phase, "error")
            if err:
                any_compile = True
                lines.append(f"- {r['block']} batch {r['batch']} {phase}: torch.compile failed: {err}")
    if not any_compile:
        lines.append("- not measured in this run (torch.compile is off in --quick; the full run measures it)")

    lines += [
        "",
        "## Cost: analytic model vs XLA, achieved FLOP/s",
        "",
        "Per example, forward. XLA counts every op (elementwise too); the cost model counts the "
        "matmul-like contractions (see each block's cost function). % peak: of the run's matmul peak; "
        "for the `large` group, of a square matmul timed in the same rounds as the block.",
        "",
        "| block | group | batch | dims | out | params (counted / model) | FLOPs model | FLOPs XLA fwd | "
        "FLOPs XLA train | fwd FLOP/s (% peak) | train FLOP/s (% peak) | fwd memory |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r or r["group"] not in ("batch", "large", "tokens"):
            continue
        if r["group"] == "batch" and r["batch"] != max(x["batch"] for x in _rows(results, "batch", r["block"])):
            continue
        j, a = r["jax"], r["analytic"]
        lines.append(
            f"| {r['block']} | {r['group']} | {r['batch']} | {r['dims']}"
            + (f" T={r['token_length']}" if r["token_length"] else "")
            + f" | {r['out_dim']} | {r['params']:,} / {a.get('params', 'n/a') if 'error' not in a else 'err'} "
            f"| {fmt_rate(a.get('flops_per_example'))} | {fmt_rate(_get(j, 'fwd', 'xla_flops_per_example'))} "
            f"| {fmt_rate(_get(j, 'train', 'xla_flops_per_example'))} "
            f"| {fmt_rate(_get(j, 'fwd', 'flops_per_s'))} ({_pct(_get(j, 'fwd', 'share_of_peak'))}) "
            f"| {fmt_rate(_get(j, 'train', 'flops_per_s'))} ({_pct(_get(j, 'train', 'share_of_peak'))}) "
            f"| {fmt_bytes(_get(j, 'fwd', 'memory', 'total'))} |"
        )

    large = [r for r in _rows(results, "large") if "ratio" in r]
    if large:
        lines += ["", "At the large sizes each phase is timed in the same rounds as a square "
                  f"{doc['grid']['peak_n']}² matmul in jax and in PyTorch; where one framework's own GEMM "
                  "is faster, that bounds the block's ratio:", "",
                  "| block | phase | mmjax / PyTorch (block) | jax / PyTorch (square matmul) |", "|---|---|---|---|"]
        for r in large:
            for phase in ("fwd", "train"):
                mm = _get(r, "jax", phase, "matmul_flops_per_s") or {}
                mm_ratio = mm["jax"] / mm["torch"] if mm.get("jax") and mm.get("torch") else None
                lines.append(f"| {r['block']} | {phase} | {_x(_get(r, 'ratio', f'{phase}_eager'))} | {_x(mm_ratio)} |")

    for group, title in (("modalities", "Scaling with the number of modalities"),
                         ("dims", "Scaling with the per-modality dim (two modalities)")):
        rows = _rows(results, group)
        if not rows:
            continue
        lines += ["", f"## {title}", "",
                  "| block | dims | params | FLOPs/example (model) | train µs/example | train memory |",
                  "|---|---|---|---|---|---|"]
        for r in rows:
            us = 1e6 / r["jax"]["train"]["examples_per_s"]
            lines.append(f"| {r['block']} | {r['dims']} | {r['params']:,} "
                         f"| {fmt_rate(_get(r, 'analytic', 'flops_per_example'))} | {us:.3g} "
                         f"| {fmt_bytes(_get(r, 'jax', 'train', 'memory', 'total'))} |")
    growth = summary.get("growth", {})
    if growth:
        lines += ["", "Growth of the model FLOPs: exponent k in FLOPs ∝ dim^k (two modalities), "
                  "and factor per added modality (dims fixed):", ""]
        for name, g in growth.items():
            lines.append(f"- {name}: dim exponent {_x(g.get('flops_vs_dim_exponent'))}, "
                         f"x{_x(g.get('flops_per_added_modality'))} per modality")

    token_rows = _rows(results, "tokens")
    if token_rows:
        lines += ["", "## Attention blocks vs token length", "",
                  "| block | batch | T | train mmjax ex/s | train torch ex/s | ratio | train memory |",
                  "|---|---|---|---|---|---|---|"]
        for r in token_rows:
            lines.append(f"| {r['block']} | {r['batch']} | {r['token_length']} "
                         f"| {fmt_rate(r['jax']['train']['examples_per_s'])} | {_torch_cell(r, 'eager', 'train')} "
                         f"| {_x(_get(r, 'ratio', 'train_eager'))} | {fmt_bytes(_get(r, 'jax', 'train', 'memory', 'total'))} |")

    sp = summary.get("low_rank_over_tensor", [])
    lines += ["", "## low_rank (LMF) over tensor (TFN) at the same sizes", "",
              f"The LMF paper reports about {LMF_PAPER_SPEEDUP['train']}x faster training and "
              f"{LMF_PAPER_SPEEDUP['inference']}x faster inference than TFN (the paper's figure, on its own "
              "tasks, sizes and hardware); ours is measured here, on the sizes below, with mmjax's TFN "
              "contracting mode by mode rather than materialising the outer product.", ""]
    if sp:
        lines += ["| group | batch | dims | out | train speed-up | fwd speed-up | params tensor/low_rank |",
                  "|---|---|---|---|---|---|---|"]
        for s in sp:
            lines.append(f"| {s['group']} | {s['batch']} | {s['dims']} | {s['out_dim']} | {_x(s.get('train'))} "
                         f"| {_x(s.get('fwd'))} | {_x(s['params_ratio'])} |")
    else:
        lines.append("(not measured: tensor and low_rank were not both in this run)")

    t = summary["targets"]
    lines += ["", "## Targets", "",
              f"Targets: mmjax >= PyTorch (ratio >= {t['ratio_at_least']}) at every size, >= "
              f"{t['small_batch_ratio_at_least']}x at the smallest batch, matmul-heavy blocks >= "
              f"{100 * t['matmul_peak_share_at_least']:.0f}% of the measured matmul peak at large sizes.", "",
              f"### Missed ({len(t['missed'])})", ""]
    lines += [f"- {m}" for m in t["missed"]] or ["- none"]
    lines += ["", f"### Met ({len(t['met'])})", ""]
    lines += [f"- {m}" for m in t["met"]] or ["- none"]
    errors = [r for r in results if "error" in r]
    torch_errors = [r for r in results if _get(r, "torch", "error")]
    if errors or torch_errors:
        lines += ["", "## Errors", ""]
        lines += [f"- {r['block']} {r['group']} batch {r['batch']} dims {r['dims']}: {r['error']}" for r in errors]
        seen = set()
        for r in torch_errors:
            key = (r["block"], r["torch"]["error"])
            if key not in seen:
                seen.add(key)
                lines.append(f"- PyTorch {r['block']}: {r['torch']['error']}")
    return "\n".join(lines) + "\n"


def plot(doc: Mapping[str, Any], out_dir: str) -> None:
    """throughput.png (train examples/s vs batch per block) and scaling.png."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results, blocks = doc["results"], doc["blocks"]
    n = len(blocks)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.9 * rows), squeeze=False)
    for ax, name in zip(axes.flat, blocks):
        rs = sorted(_rows(results, "batch", name), key=lambda r: r["batch"])
        ax.set_title(name, fontsize=10)
        if not rs:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
            continue
        b = [r["batch"] for r in rs]
        ax.plot(b, [r["jax"]["train"]["examples_per_s"] for r in rs], "o-", label="mmjax")
        for variant, style in (("eager", "s--"), ("compile", "^:")):
            pts = [(r["batch"], _get(r, "torch", variant, "train", "examples_per_s")) for r in rs]
            pts = [p for p in pts if p[1] is not None]
            if pts:
                ax.plot(*zip(*pts), style, label=f"torch {variant}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # short ranges crowd minor labels
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("batch", fontsize=8)
        ax.set_ylabel("train examples/s", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(f"Fusion blocks, forward+backward, {doc['environment']['device_kind']} "
                 f"({doc['environment']['date'][:10]})", fontsize=11)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "throughput.png"), dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for col, (group, xkey, xlabel) in enumerate((("modalities", "num_modalities", "number of modalities"),
                                                  ("dims", "dim", "per-modality dim (2 modalities)"))):
        for name in blocks:
            rs = _rows(results, group, name)
            if not rs:
                continue
            xs = [r["num_modalities"] if xkey == "num_modalities" else r["dims"][0] for r in rs]
            flops = [_get(r, "analytic", "flops_per_example") for r in rs]
            if all(f is not None for f in flops):
                axes[0, col].plot(xs, flops, "o-", label=name)
            axes[1, col].plot(xs, [1e6 / r["jax"]["train"]["examples_per_s"] for r in rs], "o-", label=name)
        axes[0, col].set_ylabel("model FLOPs / example (forward)")
        axes[1, col].set_ylabel("measured train µs / example")
        for row in range(2):
            ax = axes[row, col]
            if ax.has_data():
                ax.set_yscale("log")
                if xkey == "dim":
                    ax.set_xscale("log", base=2)
            ax.set_xlabel(xlabel)
            ax.grid(True, which="both", alpha=0.3)
        if axes[0, col].get_legend_handles_labels()[0]:
            axes[0, col].legend(fontsize=7, ncol=2)
    fig.suptitle("How fusion cost grows (tensor: product of dims; low_rank: linear)", fontsize=11)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "scaling.png"), dpi=110)
    plt.close(fig)
