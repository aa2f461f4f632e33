"""One case's contenders: the mmjax block compiled on random weights, and its
PyTorch reference (``benchmarks.reference_torch``) loaded with the same weights.

:func:`prepare_jax` and :func:`prepare_torch` build and compile; the timing
is :mod:`benchmarks.fusion_measure`'s.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any, Callable, Dict, Mapping

import numpy as np

from benchmarks.common import DTYPES, BenchmarkConfigError, Contender, memory_bytes, torch_device, xla_flops
from benchmarks.fusion_grid import Case, Grid


def block_config(name: str, case: Case) -> Dict[str, Any]:
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


def analytic_cost(case: Case, block_cfg: Mapping[str, Any]) -> Dict[str, Any]:
    """Params and forward FLOPs per example from the block's cost model (or its error)."""
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


def jax_dtype(name: str):
    """The jnp dtype named by ``Grid.dtype``; BenchmarkConfigError for any other name."""
    import jax.numpy as jnp

    if name not in DTYPES:
        raise BenchmarkConfigError(f"dtype must be one of {DTYPES}, got {name!r}")
    return getattr(jnp, name)


def _dtype_config(name: str, dtype: Any) -> Dict[str, Any]:
    import jax.numpy as jnp
    import mmjax.fusion as fusion

    cls = fusion.registry.FUSION.get(name)
    if dtype == jnp.float32 or not dataclasses.is_dataclass(cls):
        return {}
    return {"dtype": dtype} if "dtype" in {f.name for f in dataclasses.fields(cls)} else {}


def prepare_jax(case: Case, grid: Grid, inputs: Mapping[str, np.ndarray]) -> Dict[str, Any]:
    """Compiles the mmjax block's forward and forward+backward (timed later, next to PyTorch).

    With ``grid.dtype == "bfloat16"`` the block computes in bf16 on bf16 inputs
    and keeps float32 parameters (mixed precision, as in training).
    """
    import jax
    import jax.numpy as jnp
    import mmjax.fusion as fusion

    dtype = jax_dtype(grid.dtype)
    cfg = block_config(case.block, case)
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


def _phase_makers(module: Any, xs: list, autocast: Callable[[], Any]) -> Dict[str, Callable[[Any], Callable]]:
    """phase -> (module or its torch.compile) -> a no-argument call of that phase."""
    import torch

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

    return {"fwd": run_fwd, "train": run_train}


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
    cfg = block_config(case.block, case)
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

    sync = (lambda y: torch.cuda.synchronize()) if device == "cuda" else (lambda y: y)
    default_threads = torch.get_num_threads()
    threads = sorted({default_threads, 1}, reverse=True) if device == "cpu" else [default_threads]
    calls: Dict[str, Dict[int, Contender]] = {}
    makers = _phase_makers(module, xs, autocast)
    for phase in (["fwd"] if case.forward else []) + ["train"]:
        calls[phase] = {
            n: Contender(makers[phase](module), sync=sync, before=functools.partial(torch.set_num_threads, n))
            for n in threads
        }
    with torch.no_grad(), autocast():
        output = module(*xs).float().cpu().numpy()
    return {"device": device, "default_threads": default_threads, "_calls": calls, "_output": output,
            "_module": module, "_makers": makers, "_sync": sync}
