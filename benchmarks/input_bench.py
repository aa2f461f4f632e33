"""``python -m experiments bench input``: the input pipeline per process, for P real processes.

For P = 1, 2 and 4 (``Plan.procs``) P processes are started together, one per
process index, each reading its rows of the same global batches
(:mod:`benchmarks.input_pipeline`); each reports its examples/s (its own rows)
and resident memory (VmHWM). Measured:

* ``av_digits`` through ``mmjax.data.make_iterator`` at the av_digits
  config's batch size; and, in one process, that pipeline and the config's
  real train step at the same batch timed in interleaved rounds
  (:mod:`benchmarks.input_vs_train`; target: the pipeline at least 5x faster);
* ``mmjax_bench_photos``, 224x224x3 JPEGs (:mod:`benchmarks.photos`, built
  once into the cache directory), at two dataset sizes: ``make_iterator`` at
  image size (224, 224) with ``augment_flip``; a Grain pipeline with random
  resized crop + flip; and, in one process, a plain PIL loop (decode + random
  resized crop + flip, one thread) as the reference.

Targets: per-process memory roughly flat in P and in dataset size. The rows
of the first global batch are checked: disjoint between processes, and
together the global batch (by example id where batches carry one, otherwise
by a per-row fingerprint compared with the P = 1 run). Writes DIR/input.json
(every number) and DIR/input.md (see :mod:`benchmarks.input_report`).
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

from benchmarks import input_checks as checks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one run measures."""

    procs: Sequence[int] = (1, 2, 4)
    av_name: str = "av_digits"
    av_batch: Optional[int] = None  # None: the av_digits experiment config's batch size
    av_steps: int = 100
    photo_sizes: Sequence[int] = (20_000, 100_000)
    photo_batch: int = 256
    photo_steps: int = 20
    warmup: int = 3
    grain_threads: int = 2
    train_step: bool = True
    train_steps: int = 20  # per round of the interleaved pipeline / train step timing


FULL = Plan()
QUICK = Plan(av_steps=100, photo_sizes=(2_000, 10_000), photo_batch=64, photo_steps=20, warmup=2, train_steps=10)
TINY = Plan(procs=(1, 2), av_name="av_digits/tiny", av_batch=8, av_steps=3, photo_sizes=(64,), photo_batch=8,
            photo_steps=2, warmup=1, train_step=False)


def memory_available_kib() -> Optional[int]:
    """MemAvailable from /proc/meminfo (KiB), or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _vm_rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _env() -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["JAX_PLATFORMS"] = "cpu"  # input pipelines are host work; keep them off accelerators
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def _tail(path: str) -> str:
    """The last line a failed worker wrote to stderr (the exception)."""
    with open(path, errors="replace") as f:
        text = [ln.strip() for ln in f.read().splitlines() if ln.strip()]
    return text[-1] if text else "no output"


def _watch(procs: List[subprocess.Popen], errs: List[str], budget_kib: Optional[int], timeout_s: float):
    """Polls the processes until all end; returns (error or None, max total VmRSS seen in KiB)."""
    t0, peak_total, error = time.monotonic(), 0, None
    while any(p.poll() is None for p in procs):
        total = sum(_vm_rss_kib(p.pid) for p in procs if p.poll() is None)
        peak_total = max(peak_total, total)
        failed = [i for i, p in enumerate(procs) if p.returncode not in (None, 0)]
        if failed:
            error = f"process {failed[0]} failed: {_tail(errs[failed[0]])}"
        elif budget_kib and total > budget_kib:
            error = (f"stopped: the {len(procs)} processes held {total / 2**20:.1f} GiB together, over the "
                     f"memory budget of {budget_kib / 2**20:.1f} GiB")
        elif time.monotonic() - t0 > timeout_s:
            error = f"stopped after {timeout_s:.0f} s"
        if error:
            for p in procs:
                if p.poll() is None:
                    p.kill()
            break
        time.sleep(0.05)
    for p in procs:
        p.wait()
    failed = [i for i, p in enumerate(procs) if p.returncode != 0]
    if error is None and failed:
        error = f"process {failed[0]} failed: {_tail(errs[failed[0]])}"
    return error, peak_total


def run_processes(spec: Dict[str, Any], num_procs: int, work_dir: str, *, budget_kib: Optional[int] = None,
                  timeout_s: float = 1800.0) -> Dict[str, Any]:
    """Starts ``num_procs`` workers of ``spec`` together (process_index 0..P-1) and collects their results.

    Returns {"P", "processes": [per-process results], "error": None or why it
    failed, "wall_s", "peak_total_rss_kib": the most the P processes held together}.
    """
    from benchmarks.common import write_json

    run_dir = tempfile.mkdtemp(prefix=f"input_P{num_procs}_", dir=work_dir)
    procs, errs = [], []
    t = time.perf_counter()
    try:
        for p in range(num_procs):
            s = dict(spec, process_index=p, process_count=num_procs, barrier_dir=run_dir,
                     out=os.path.join(run_dir, f"result.{p}.json"))
            write_json(os.path.join(run_dir, f"spec.{p}.json"), s)
            errs.append(os.path.join(run_dir, f"stderr.{p}.txt"))
            with open(errs[-1], "w") as err:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "benchmarks.input_pipeline", "--worker", os.path.join(run_dir, f"spec.{p}.json")],
                    cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=err))
        error, peak_total = _watch(procs, errs, budget_kib, timeout_s)
        results = []
        if error is None:
            import json

            for p in range(num_procs):
                with open(os.path.join(run_dir, f"result.{p}.json")) as f:
                    results.append(json.load(f))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        shutil.rmtree(run_dir, ignore_errors=True)
    return {"P": num_procs, "processes": results, "error": error, "wall_s": time.perf_counter() - t,
            "peak_total_rss_kib": peak_total}


def _sweep(name: str, spec: Dict[str, Any], procs: Sequence[int], work_dir: str, budget_kib, say,
           expected_ids: Optional[List[int]] = None) -> Dict[str, Any]:
    """One pipeline on one dataset for every P; the rows check and summary added to each run."""
    runs = []
    for num in procs:
        say(f"{name}: P={num}")
        runs.append(run_processes(spec, num, work_dir, budget_kib=budget_kib))
    reference = next((r for r in runs if r["P"] == 1 and not r["error"]), None)
    for r in runs:
        r["rows_check"] = checks.rows_check(r, reference, expected_ids)
        r["summary"] = checks.summarize_run(r)
    return {"name": name, "spec": {k: v for k, v in spec.items() if k != "out"}, "runs": runs}


def _photo_measurements(plan: Plan, cache_dir: str, work_dir: str, budget_kib, say) -> Dict[str, Any]:
    from benchmarks import photos
    from benchmarks.input_pipeline import local_rows

    builds, sweeps = [], []
    for n in plan.photo_sizes:
        try:
            builds.append(photos.build(cache_dir, n, log=say))
        except Exception as e:  # e.g. scikit-image or tensorflow missing: the other numbers stand
            builds.append({"name": photos.config_name(n), "num_examples": n, "error": f"{type(e).__name__}: {e}"})
            continue
        base = {"dataset": photos.config_name(n), "data_dir": cache_dir, "source_dir": photos.dataset_dir(cache_dir, n),
                "num_examples": n, "image_size": [photos.SIZE, photos.SIZE], "global_batch": plan.photo_batch,
                "seed": 0, "warmup": plan.warmup, "steps": plan.photo_steps, "threads": plan.grain_threads}
        ids = local_rows(n, plan.photo_batch, 0, 1, 0, 1)[0].tolist()
        sweeps.append(_sweep(f"mmjax make_iterator, {n} JPEGs", dict(base, pipeline="mmjax", photos=True,
                                                                      augment_flip=True),
                             plan.procs, work_dir, budget_kib, say))
        sweeps.append(_sweep(f"grain + PIL, {n} JPEGs", dict(base, pipeline="grain"), plan.procs, work_dir,
                             budget_kib, say, expected_ids=ids))
        if n == max(plan.photo_sizes):
            sweeps.append(_sweep(f"plain PIL loop, {n} JPEGs", dict(base, pipeline="pil"), (1,), work_dir,
                                 budget_kib, say, expected_ids=ids))
    return {"builds": builds, "sweeps": sweeps}


def av_batch_size(plan: Plan) -> int:
    if plan.av_batch:
        return int(plan.av_batch)
    from experiments.config_utils import load_config

    return int(load_config("av_digits").batch_size)


def run(out_dir: str, *, plan: Plan = QUICK, data_dir: Optional[str] = None, cache_dir: Optional[str] = None,
        command: Optional[str] = None, log: Optional[Callable[[str], None]] = print) -> Dict[str, Any]:
    """Measures ``plan``; writes DIR/input.json and DIR/input.md and returns the document.

    Args:
      data_dir: tfds data dir of av_digits (None: the reader's default); built on first use.
      cache_dir: where the JPEG datasets are built and reused (default DIR/cache).
      command: the command line shown next to the tables.
    """
    from benchmarks import input_report
    from benchmarks.common import environment, write_json

    say = log or (lambda _: None)
    os.makedirs(out_dir, exist_ok=True)
    cache_dir = os.path.abspath(cache_dir or os.path.join(out_dir, "cache"))
    work_dir = tempfile.mkdtemp(prefix="bench_input_")
    started = time.time()
    available = memory_available_kib()
    budget = None if available is None else int(0.8 * available)
    batch = av_batch_size(plan)
    av_spec = {"pipeline": "mmjax", "dataset": plan.av_name, "data_dir": data_dir, "global_batch": batch, "seed": 0,
               "warmup": plan.warmup, "steps": plan.av_steps}
    try:
        say(f"{plan.av_name}: preparing (built on first use)")
        prepare = run_processes(dict(av_spec, warmup=1, steps=0), 1, work_dir, budget_kib=budget)
        av = _sweep(f"mmjax make_iterator, {plan.av_name}", av_spec, plan.procs, work_dir, budget, say)
        av["prepare"] = {"wall_s": prepare["wall_s"], "error": prepare["error"]}
        photo = _photo_measurements(plan, cache_dir, work_dir, budget, say)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    train = {"skipped": "disabled by the caller"}
    if plan.train_step:
        from benchmarks import input_vs_train

        say(f"{plan.av_name} pipeline and the av_digits train step at batch {batch}, interleaved")
        train = input_vs_train.measure(plan.av_name, batch, data_dir, steps=plan.train_steps)
    doc = {
        "benchmark": "input", "plan": dataclasses.asdict(plan), "command": command or default_command(out_dir, plan),
        "environment": environment(), "memory_available_kib": available, "memory_budget_kib": budget,
        "data_dir": data_dir, "cache_dir": cache_dir, "av_digits": av, "av_digits_train_step": train,
        "photos": photo, "elapsed_s": time.time() - started,
    }
    doc["targets"] = checks.targets(doc)
    write_json(os.path.join(out_dir, "input.json"), doc)
    with open(os.path.join(out_dir, "input.md"), "w") as f:
        f.write(input_report.render(doc))
    say(f"wrote {os.path.join(out_dir, 'input.json')} and input.md")
    return doc


def default_command(out_dir: str, plan: Plan) -> str:
    """The command line that measures ``plan`` (a Python call for plans the command line has no flag for)."""
    if plan in (QUICK, FULL):
        return f"python -m experiments bench input{' --quick' if plan == QUICK else ''} --out {out_dir}"
    name = {TINY: "TINY"}.get(plan, repr(plan))
    return f"benchmarks.input_bench.run({out_dir!r}, plan={name})"
