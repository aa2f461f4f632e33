"""Training-step throughput: steps/s and examples/s of a pure train step.

What is here does not depend on the training system: a synthetic batch in
the mmjax batch format and a timer for any pure ``(state, batch) -> (state,
metrics)`` step, compiled once (compile time reported separately), then run
in steady state with the state threaded through, as a real loop does.

:func:`run` (``python -m experiments bench train [--quick] [--out DIR]``)
builds each configuration with ``mmjax.train.builder.build`` (the same Runner a
training run uses), compiles its train step ahead of time for the
``single``, ``pmap`` and ``sharded`` modes, and reports per configuration and
mode: compile seconds, steady-state examples/s (batch already on device, and
end to end including ``put_batch`` from host numpy), XLA's FLOPs per step and
MFU against a matmul peak measured in the same run. Inputs are random arrays
of the real shapes: this measures speed, not learning.

On a CPU host with one device the multi-device modes run in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=N``: those are fake
devices sharing the same cores, so their numbers show the overhead of the
parallel machinery, not a speed-up.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from benchmarks.common import DTYPES


class TrainSystemUnavailable(RuntimeError):
    """``mmjax.train`` is not available in this checkout."""


def synthetic_batch(
    inputs: Mapping[str, Tuple[Tuple[int, ...], str]],
    batch_size: int,
    num_classes: int,
    *,
    seed: int = 0,
    vocab_size: int = 1000,
) -> Dict[str, Any]:
    """A random batch in the mmjax format (see ARCHITECTURE.md).

    Args:
      inputs: modality -> (per-example shape, dtype) with dtype "float32" or
        "int32" (token ids in [1, vocab_size), 0 is padding and never drawn).
      batch_size: B.
      num_classes: labels are drawn from [0, num_classes).
    Returns:
      {"inputs": {m: (B, ...)}, "modality_mask": {m: (B,) True}, "label": (B,) int32}.
    """
    if batch_size < 1 or num_classes < 1:
        raise ValueError(f"batch_size and num_classes must be >= 1, got {batch_size}, {num_classes}")
    rng = np.random.default_rng(seed)
    out: Dict[str, Any] = {"inputs": {}, "modality_mask": {}}
    for name, (shape, dtype) in sorted(inputs.items()):
        full = (batch_size,) + tuple(shape)
        if dtype == "int32":
            out["inputs"][name] = rng.integers(1, vocab_size, size=full, dtype=np.int32)
        elif dtype == "float32":
            out["inputs"][name] = rng.standard_normal(full, dtype=np.float32)
        else:
            raise ValueError(f"modality {name!r}: dtype must be 'float32' or 'int32', got {dtype!r}")
        out["modality_mask"][name] = np.ones((batch_size,), bool)
    out["label"] = rng.integers(0, num_classes, size=(batch_size,), dtype=np.int32)
    return out


def time_train_step(
    step: Callable[[Any, Any], Tuple[Any, Any]],
    state: Any,
    batch: Any,
    *,
    repeats: int = 5,
    steps_per_repeat: int = 10,
    jit: bool = True,
) -> Dict[str, Any]:
    """Steady-state speed of a pure train step.

    The step is compiled ahead of time (``jax.jit(step).lower(...).compile()``)
    unless ``jit=False`` (an already-wrapped pmap / sharded step), run once to
    warm up, then ``repeats`` times ``steps_per_repeat`` steps threading the
    state; each repeat ends with ``block_until_ready`` on the state.

    Returns:
      compile_s, step_s (median seconds per step), steps_per_s,
      examples_per_s, the final state (under "state") and the last metrics.
    """
    import jax

    leaves = jax.tree.leaves(batch)
    if not leaves:
        raise ValueError("batch has no arrays")
    batch_size = int(np.shape(leaves[0])[0])
    compile_s = None
    if jit:
        t0 = time.perf_counter()
        step = jax.jit(step).lower(state, batch).compile()
        compile_s = time.perf_counter() - t0
    state, metrics = step(state, batch)
    jax.block_until_ready(state)
    per_step = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps_per_repeat):
            state, metrics = step(state, batch)
        jax.block_until_ready(state)
        per_step.append((time.perf_counter() - t0) / steps_per_repeat)
    step_s = statistics.median(per_step)
    return {
        "compile_s": compile_s,
        "step_s": step_s,
        "steps_per_s": 1.0 / step_s,
        "examples_per_s": batch_size / step_s,
        "steps_timed": repeats * steps_per_repeat,
        "state": state,
        "metrics": metrics,
    }



# Per configuration: the experiment config (or a builder), per-example input shapes and C.
LARGE_QUICK = {"image_size": 32, "patch": 8, "dim": 64, "layers": 2, "heads": 4, "text_len": 16, "vocab": 1000}
LARGE_FULL = {"image_size": 64, "patch": 8, "dim": 256, "layers": 4, "heads": 8, "text_len": 64, "vocab": 8000}


def av_digits_case(batch_size: Optional[int] = None) -> Dict[str, Any]:
    """The ``av_digits`` experiment config as trained (its encoders, fusion, optimizer)."""
    from experiments.config_utils import load_config

    config = load_config("av_digits")
    if batch_size:
        config.batch_size = batch_size
    return {"name": "av_digits", "config": config, "num_classes": 10,
            "inputs": {"image": ((28, 28, 1), "float32"), "audio": ((8000,), "float32")},
            "description": "av_digits config: " + str(config.description)}


def vit_text_case(size: Mapping[str, int], batch_size: int, fusion: str = "cross_attention") -> Dict[str, Any]:
    """A larger model defined here: ViT image encoder + transformer text encoder + attention fusion."""
    from experiments.configs import base
    from experiments.config_utils import add_defaults

    c = add_defaults(base.get_config())
    d, L, h = size["dim"], size["layers"], size["heads"]
    c.total_steps = 1000
    c.batch_size = batch_size
    c.model.encoders = {
        "image": {"name": "vit", "patch_size": size["patch"], "hidden_dim": d, "num_layers": L,
                  "num_heads": h, "mlp_dim": 4 * d},
        "text": {"name": "transformer", "vocab_size": size["vocab"], "hidden_dim": d, "num_layers": L,
                 "num_heads": h, "mlp_dim": 4 * d, "max_len": size["text_len"]},
    }
    c.model.fusion = fusion
    c.model.fusion_config = {"out_dim": d, "dim": d, "num_heads": h} if fusion == "cross_attention" else {"out_dim": d}
    c.model.head_hidden = (d,)
    s = size["image_size"]
    return {"name": f"vit_text_{fusion}", "config": c, "num_classes": 10,
            "inputs": {"image": ((s, s, 3), "float32"), "text": ((size["text_len"],), "int32")},
            "vocab_size": size["vocab"],
            "description": (f"ViT (image {s}x{s}x3, patch {size['patch']}) + transformer text (len {size['text_len']}) "
                            f"+ {fusion}; width {d}, {L} layers, {h} heads")}


def tiny_case() -> Dict[str, Any]:
    """Two small vector modalities, MLP encoders, concat fusion: compiles in seconds (for tests)."""
    from experiments.configs import base
    from experiments.config_utils import add_defaults

    c = add_defaults(base.get_config())
    c.batch_size = 4
    c.model.encoders = {"a": {"name": "mlp", "features": (8,)}, "b": {"name": "mlp", "features": (8,)}}
    c.model.fusion = "concat"
    c.model.fusion_config = {"out_dim": 8}
    return {"name": "tiny_mlp_concat", "config": c, "num_classes": 3,
            "inputs": {"a": ((6,), "float32"), "b": ((5,), "float32")},
            "description": "two vectors (6,) and (5,), MLP encoders of width 8, concat fusion"}


def cases(quick: bool, tiny: bool = False, dtype: str = "float32", batch_size: Optional[int] = None
          ) -> List[Dict[str, Any]]:
    """The measured configurations; ``dtype`` is the models' compute dtype (params stay
    float32), ``batch_size`` overrides the larger model's batch (a GPU wants hundreds)."""
    if dtype not in DTYPES:
        raise ValueError(f"bench train: dtype must be one of {DTYPES}, got {dtype!r}")
    if tiny:
        out = [tiny_case()]
    else:
        out = [av_digits_case(16 if quick else None),
               vit_text_case(LARGE_QUICK if quick else LARGE_FULL, batch_size or (16 if quick else 32))]
    for c in out:
        c["config"].model.dtype = dtype
    return out


def compiled_step(case: Mapping[str, Any], mode: str) -> Dict[str, Any]:
    """One configuration's Runner (``mmjax.train.builder.build``) and its train step compiled for ``mode``.

    Returns runner, host_batch (random, the real shapes), state, batch (on
    device), compiled (the Runner's own jit / pmap / sharded wrapper),
    compile_s and batch_size.
    """
    import jax

    from mmjax.train.builder import build

    config = case["config"]
    config.parallel.mode = mode
    runner = build(config, case["num_classes"], {"num_classes": case["num_classes"]})
    batch_size = int(config.batch_size)
    host_batch = synthetic_batch(case["inputs"], batch_size, case["num_classes"],
                                 vocab_size=case.get("vocab_size", 1000))
    state = runner.create_state(host_batch, jax.random.PRNGKey(0))
    batch = runner.put_batch(host_batch)
    t0 = time.perf_counter()
    compiled = runner.compile_train_step(state, batch)
    return {"runner": runner, "host_batch": host_batch, "state": state, "batch": batch, "compiled": compiled,
            "compile_s": time.perf_counter() - t0, "batch_size": batch_size}


def measure_mode(case: Mapping[str, Any], mode: str, *, peak: Optional[float], repeats: int, steps_per_repeat: int,
                 shared_cores: bool) -> Dict[str, Any]:
    """Compile + steady-state timing of one configuration's train step in one parallel mode."""
    import jax

    from benchmarks.common import memory_bytes, xla_flops

    step = compiled_step(case, mode)
    runner, host_batch, state, batch = step["runner"], step["host_batch"], step["state"], step["batch"]
    compiled, compile_s, batch_size = step["compiled"], step["compile_s"], step["batch_size"]
    num_params = int(sum(np.size(x) for x in jax.tree.leaves(runner.host_state(state).params)))
    n_dev = 1 if mode == "single" else (len(runner.local_devices) if mode == "pmap" else runner.mesh.size)
    flops = xla_flops(compiled)
    # pmap compiles one per-device program; sharded jit one SPMD program per device too: both count
    # one device's share, so the model FLOPs of a step are n_dev times that.
    model_flops = None if flops is None else flops * (1 if mode == "single" else n_dev)
    on_device = time_train_step(compiled, state, batch, repeats=repeats, steps_per_repeat=steps_per_repeat, jit=False)
    state = on_device.pop("state")
    loss = float(np.asarray(jax.device_get(on_device.pop("metrics")["loss"])).ravel()[0])

    def e2e(s, b):
        return compiled(s, runner.put_batch(b))
    end = time_train_step(e2e, state, host_batch, repeats=repeats, steps_per_repeat=steps_per_repeat, jit=False)
    end.pop("state")
    end.pop("metrics")
    # Fake CPU devices share one machine's cores, so their joint peak is the single measured peak.
    total_peak = None if peak is None else peak * (1 if shared_cores else n_dev)
    mfu = None if model_flops is None or total_peak is None else model_flops / on_device["step_s"] / total_peak
    return {
        "config": case["name"], "mode": mode, "devices": n_dev, "batch_size": batch_size,
        "compile_s": compile_s,
        "step_s": on_device["step_s"], "examples_per_s": batch_size / on_device["step_s"],
        "e2e_step_s": end["step_s"], "e2e_examples_per_s": batch_size / end["step_s"],
        "steps_timed": on_device["steps_timed"] + end["steps_timed"],
        "xla_flops_per_device_program": flops, "model_flops_per_step": model_flops,
        "achieved_flops_per_s": None if model_flops is None else model_flops / on_device["step_s"],
        "peak_flops_per_s": total_peak, "mfu": mfu,
        "memory": memory_bytes(compiled), "loss_after_steps": loss,
        "params": num_params,
    }


def _worker(args: argparse.Namespace) -> int:
    """Subprocess entry: measures ``args.modes`` for every case, writes JSON to ``args.json``."""
    import jax

    if args.expect_devices and jax.device_count() != args.expect_devices:
        raise SystemExit(f"bench train worker: expected {args.expect_devices} devices from XLA_FLAGS="
                         f"{os.environ.get('XLA_FLAGS', '')!r}, got {jax.device_count()}")
    results, errors = [], []
    for case in cases(args.quick, args.tiny, args.dtype, args.batch_size):
        for mode in args.modes.split(","):
            try:
                results.append(measure_mode(case, mode, peak=args.peak, repeats=args.repeats,
                                            steps_per_repeat=args.steps, shared_cores=args.shared_cores))
            except Exception as e:  # reported per row; one failing mode must not hide the others
                errors.append({"config": case["name"], "mode": mode, "error": f"{type(e).__name__}: {e}"})
    with open(args.json, "w") as f:
        json.dump({"results": results, "errors": errors, "devices": [str(d) for d in jax.devices()],
                   "xla_flags": os.environ.get("XLA_FLAGS", "")}, f, default=str)
    return 0


def _in_subprocess(modes: Sequence[str], n_fake: int, *, quick: bool, tiny: bool, peak: Optional[float],
                   repeats: int, steps: int, out_dir: str, dtype: str = "float32",
                   batch_size: Optional[int] = None) -> Dict[str, Any]:
    path = os.path.join(out_dir, f"train_worker_{n_fake}dev.json")
    env = dict(os.environ)
    # First, so that a malformed inherited flag cannot swallow it.
    env["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={n_fake} " + env.get("XLA_FLAGS", "")).strip()
    env["JAX_PLATFORMS"] = "cpu"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", "benchmarks.train_throughput", "--worker", "--modes", ",".join(modes),
           "--json", path, "--repeats", str(repeats), "--steps", str(steps), "--shared-cores"]
    cmd += ["--quick"] if quick else []
    cmd += ["--tiny"] if tiny else []
    cmd += ["--peak", repr(peak)] if peak else []
    cmd += ["--expect-devices", str(n_fake), "--dtype", dtype]
    cmd += ["--batch-size", str(batch_size)] if batch_size else []
    proc = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True)
    if proc.returncode != 0 or not os.path.exists(path):
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"results": [], "errors": [{"config": "*", "mode": m, "error": " | ".join(tail)} for m in modes]}
    with open(path) as f:
        doc = json.load(f)
    os.remove(path)
    return doc


def input_pipeline_result(quick: bool) -> Dict[str, Any]:
    """Examples/s of the av_digits input pipeline alone, or {"skipped": reason}."""
    try:
        import mmjax.data  # noqa: F401
    except ImportError as e:
        return {"skipped": f"mmjax.data is not importable ({e})"}
    from mmjax.data.config import resolve_data_dir

    data_dir = resolve_data_dir(None)
    if not os.path.isdir(os.path.join(data_dir, "av_digits")):
        return {"skipped": f"the av_digits dataset is not built in {data_dir} "
                           "(python -m experiments data build av_digits)"}
    from benchmarks import input_pipeline

    try:
        return input_pipeline.measure("av_digits", batch=32 if quick else 256, steps=20 if quick else 50)
    except Exception as e:
        return {"skipped": f"input pipeline failed: {type(e).__name__}: {e}"}


def run(out_dir: str, *, quick: bool = False, tiny: bool = False, input_pipeline: bool = True,
        modes: Sequence[str] = ("single", "pmap", "sharded"), dtype: str = "float32",
        batch_size: Optional[int] = None, log: Optional[Callable[[str], None]] = print) -> Dict[str, Any]:
    """Train-step throughput per configuration and parallel mode; writes DIR/train.json and DIR/train.md.

    Args:
      quick: smaller models and fewer timed steps (a few minutes on CPU).
      tiny: one very small configuration (for tests).
      dtype: compute dtype of the models, float32 or bfloat16 (parameters stay
        float32); the matmul peak is measured in the same dtype.
      batch_size: the larger model's batch (default 16 quick, 32 full).
      input_pipeline: also time the av_digits input pipeline alone when it is available.
      modes: the parallel modes to measure (subset of single, pmap, sharded).
    """
    try:
        import mmjax.train.loop  # noqa: F401
    except ImportError as e:
        raise TrainSystemUnavailable(f"bench train needs mmjax.train ({e}); `bench fusion` works without it") from None
    import jax

    from benchmarks.common import BenchmarkConfigError, environment, matmul_peak, write_json

    from mmjax.train.parallel import MODES

    bad = sorted(set(modes) - set(MODES))
    if bad:
        raise BenchmarkConfigError(f"bench train: unknown modes {bad}; choose from {list(MODES)}")
    if dtype not in DTYPES:
        raise BenchmarkConfigError(f"bench train: dtype must be one of {DTYPES}, got {dtype!r}")
    if batch_size is not None and batch_size < 1:
        raise BenchmarkConfigError(f"bench train: batch size must be >= 1, got {batch_size}")
    os.makedirs(out_dir, exist_ok=True)
    say = log or (lambda _: None)
    repeats, steps = (2, 2) if tiny else ((3, 3) if quick else (5, 10))
    started = time.time()
    env = environment()
    say("measuring the matmul peak...")
    peak = matmul_peak(256 if tiny else (1024 if quick else 2048), repeats=3, min_time=0.05 if tiny else 0.2,
                       torch_too=not tiny, dtype=dtype)
    all_cases = cases(quick, tiny, dtype, batch_size)
    peak_f = peak["peak_flops_per_s"]
    results: List[Dict[str, Any]] = []
    errors: List[Dict[str, Any]] = []
    multi = [m for m in ("pmap", "sharded") if m in modes]
    for case in all_cases if "single" in modes else ():
        say(f"{case['name']}: single")
        try:
            results.append(measure_mode(case, "single", peak=peak_f, repeats=repeats, steps_per_repeat=steps,
                                        shared_cores=False))
        except Exception as e:
            errors.append({"config": case["name"], "mode": "single", "error": f"{type(e).__name__}: {e}"})
    n = jax.device_count()
    on_cpu = jax.devices()[0].platform == "cpu"
    if not multi:
        multi_note = "pmap and sharded were not measured in this run"
    elif n > 1 or not on_cpu:
        multi_note = f"pmap and sharded run on the {n} real {jax.devices()[0].platform} device(s) of this process"
        for case in all_cases:
            for mode in multi:
                say(f"{case['name']}: {mode}")
                try:
                    results.append(measure_mode(case, mode, peak=peak_f, repeats=repeats, steps_per_repeat=steps,
                                                shared_cores=on_cpu))
                except Exception as e:
                    errors.append({"config": case["name"], "mode": mode, "error": f"{type(e).__name__}: {e}"})
    else:
        n_fake = 2 if (quick or tiny) else 4
        multi_note = (f"pmap and sharded run in a subprocess with XLA_FLAGS=--xla_force_host_platform_device_count="
                      f"{n_fake}: {n_fake} FAKE CPU devices sharing the same cores, so they show the cost of the "
                      "parallel machinery, not a speed-up; their MFU uses the single measured machine peak")
        say(f"pmap, sharded: subprocess with {n_fake} fake CPU devices")
        doc = _in_subprocess(multi, n_fake, quick=quick, tiny=tiny, peak=peak_f, repeats=repeats,
                             steps=steps, out_dir=out_dir, dtype=dtype, batch_size=batch_size)
        results += doc["results"]
        errors += doc["errors"]
    pipeline = {"skipped": "disabled by the caller"} if not input_pipeline else input_pipeline_result(quick)
    doc = {
        "benchmark": "train",
        "quick": quick, "tiny": tiny, "dtype": dtype,
        "note": ("Inputs are random arrays of the real shapes (a speed measurement, not data). examples_per_s: "
                 "steady state with the batch already on device, compile excluded (compile_s); e2e_examples_per_s "
                 "adds put_batch from host numpy. MFU = XLA cost-analysis FLOPs of the compiled train step / "
                 "step time / matmul peak measured in this run."),
        "multi_device": multi_note,
        "environment": env, "peak": peak,
        "configs": [{"name": c["name"], "description": c["description"], "batch_size": int(c["config"].batch_size),
                     "inputs": {m: {"shape": list(s), "dtype": d} for m, (s, d) in c["inputs"].items()}}
                    for c in all_cases],
        "results": results, "errors": errors, "input_pipeline": pipeline,
        "elapsed_s": time.time() - started,
    }
    write_json(os.path.join(out_dir, "train.json"), doc)
    with open(os.path.join(out_dir, "train.md"), "w") as f:
        f.write(render_markdown(doc))
    say(f"wrote {os.path.join(out_dir, 'train.json')} and train.md")
    return doc


def render_markdown(doc: Mapping[str, Any]) -> str:
    """train.json -> a Markdown report."""
    from benchmarks.common import fmt_rate

    env = doc["environment"]
    lines = ["# Training throughput", "",
             f"{env['date']}, {env['platform']} ({env['cpu_model']}, {env['cpu_count']} cores, "
             f"load average {env.get('load_average')}), jax {env['jax']}.", "",
             doc["note"], "", doc["multi_device"], "",
             f"Compute dtype {doc.get('dtype', 'float32')} (parameters float32). Matmul peak: "
             f"{fmt_rate(doc['peak']['peak_flops_per_s'])}FLOP/s (n={doc['peak']['n']}, "
             f"{doc['peak'].get('dtype', 'float32')}).", "",
             "| config | mode | devices | batch | compile s | step ms | examples/s | e2e examples/s | GFLOP/step | MFU |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in doc["results"]:
        gf = "-" if r["model_flops_per_step"] is None else f"{r['model_flops_per_step'] / 1e9:.3g}"
        mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        lines.append(f"| {r['config']} | {r['mode']} | {r['devices']} | {r['batch_size']} | {r['compile_s']:.2f} | "
                     f"{r['step_s'] * 1e3:.1f} | {fmt_rate(r['examples_per_s'])} | {fmt_rate(r['e2e_examples_per_s'])} | "
                     f"{gf} | {mfu} |")
    for e in doc["errors"]:
        lines.append(f"| {e['config']} | {e['mode']} | failed: {e['error']} | | | | | | | |")
    lines += ["", "Configurations:", ""]
    for c in doc["configs"]:
        shapes = ", ".join(f"{m} {tuple(v['shape'])} {v['dtype']}" for m, v in c["inputs"].items())
        lines.append(f"- `{c['name']}`: {c['description']}; inputs {shapes}; batch {c['batch_size']}")
    p = doc["input_pipeline"]
    lines += ["", "Input pipeline alone (av_digits train split, no model): " + (
        f"skipped: {p['skipped']}" if "skipped" in p else
        f"{fmt_rate(p['examples_per_s'])} examples/s at batch {p['batch']} (backend {p['backend']}; "
        f"one-off decode+cache {p['load_s']:.1f} s of {p['num_examples']} examples)"), ""]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description="training-step throughput (see the module docstring)")
    p.add_argument("--out", default="bench_out")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--modes", default="pmap,sharded", help=argparse.SUPPRESS)
    p.add_argument("--json", default=None, help=argparse.SUPPRESS)
    p.add_argument("--peak", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--repeats", type=int, default=3, help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, default=3, help=argparse.SUPPRESS)
    p.add_argument("--expect-devices", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--shared-cores", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="float32", choices=DTYPES)
    p.add_argument("--batch-size", type=int, default=None)
    args = p.parse_args(argv)
    if args.worker:
        return _worker(args)
    run(args.out, quick=args.quick, tiny=args.tiny, dtype=args.dtype, batch_size=args.batch_size)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
