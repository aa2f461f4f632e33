"""input.json -> input.md: the tables of ``bench input`` (see :mod:`benchmarks.input_bench`)."""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from benchmarks.common import fmt_rate

HEADER = ("| P | rows/process | examples/s per process (min-max) | host examples/s | first batch s | "
          "peak RSS MiB/process | RSS after imports MiB | growth MiB | rows disjoint / cover |")


def _f(x: Optional[float], spec: str = ".0f") -> str:
    return "-" if x is None else format(x, spec)


def _rows_cell(check: Optional[Dict[str, Any]]) -> str:
    if not check:
        return "-"
    cover = {True: "yes", False: "NO", None: "-"}[check["covers_global_batch"]]
    return f"{'yes' if check['disjoint'] else 'NO'} / {cover} (by {check['by']})"


def _run_cells(run: Dict[str, Any]) -> str:
    if run.get("error"):
        return f"| {run['P']} | failed: {run['error'][:300]} | | | | | | | |"
    s = run["summary"]
    return (f"| {run['P']} | {s['rows_per_process']} | {fmt_rate(s['examples_per_s_mean'])} "
            f"({fmt_rate(s['examples_per_s_min'])}-{fmt_rate(s['examples_per_s_max'])}) | "
            f"{fmt_rate(s['host_examples_per_s'])} | {_f(s['first_batch_s_max'], '.2f')} | "
            f"{_f(s['peak_rss_mib_mean'])} | {_f(s['rss_after_imports_mib_mean'])} | "
            f"{_f(s['rss_growth_mib_mean'])} | {_rows_cell(run.get('rows_check'))} |")


def _sweep_table(sweep: Dict[str, Any]) -> List[str]:
    lines = [f"**{sweep['name']}**", "", HEADER, "|" + "---|" * 9]
    lines += [_run_cells(r) for r in sweep["runs"]]
    return lines + [""]


def _train_line(doc: Dict[str, Any]) -> str:
    train, t = doc["av_digits_train_step"], doc["targets"]["pipeline_over_train_step"]
    if "skipped" in train:
        return f"av_digits train step: not measured ({train['skipped']})."
    met = {True: "met", False: "NOT met", None: "-"}[t["met"]]
    per_p = ", ".join(f"P={p}: {_f(r, '.1f')}x" for p, r in t["per_P"].items())
    return (f"Pipeline against the av_digits config's real train step (single device, batch {train['batch_size']}, "
            f"compile excluded, batch on device), timed in {train['rounds']} interleaved rounds of "
            f"{train['steps_per_round']} batches in one process: pipeline {fmt_rate(train['pipeline_examples_per_s'])} "
            f"examples/s, train step {fmt_rate(train['examples_per_s'])} examples/s ({train['step_s'] * 1e3:.1f} ms "
            f"per step): **{train['ratio']:.1f}x** (per round {train['ratio_min']:.1f}-{train['ratio_max']:.1f}x; "
            f"target >= {t['target']:.0f}x, {met}). Per-process rates of the table above over that train step: {per_p}.")


def _builds(doc: Dict[str, Any]) -> List[str]:
    out = []
    for b in doc["photos"]["builds"]:
        if "error" in b:
            out.append(f"- `{b['name']}`: not built ({b['error']})")
            continue
        how = f"built in {b['build_s']:.0f} s" if b["build_s"] is not None else "reused from the cache" + (
            f" (built in {b['built_in_s']:.0f} s)" if b.get("built_in_s") is not None else "")
        out.append(f"- `{b['name']}`: {b['num_examples']} examples, {b['bytes'] / 1e6:.0f} MB of ArrayRecord, {how} "
                   f"({b['dir']})")
    return out


def _targets(doc: Dict[str, Any]) -> List[str]:
    t = doc["targets"]
    lines = ["## Targets", "",
             f"Per-process memory is called flat when the peak RSS per process grows by at most "
             f"{t['flat_threshold']:.2f}x.", "", "Flat in P (peak RSS per process at the largest P over P=1):", ""]
    for m in t["memory_flat_in_P"]:
        lines.append(f"- {m['sweep']}: {m['peak_rss_mib_P1']:.0f} -> {m['peak_rss_mib_top']:.0f} MiB at P={m['P']} "
                     f"({m['ratio']:.2f}x, {'flat' if m['flat'] else 'NOT flat'})")
    lines += ["", "Flat in dataset size (peak RSS per process, larger over smaller dataset):", ""]
    for kind, rows in t["memory_flat_in_size"].items():
        for m in rows:
            lines.append(f"- {kind}, P={m['P']}, {m['examples'][0]} -> {m['examples'][1]} examples: "
                         f"{m['peak_rss_mib'][0]:.0f} -> {m['peak_rss_mib'][1]:.0f} MiB "
                         f"({m['ratio']:.2f}x, {'flat' if m['flat'] else 'NOT flat'})")
    if not t["memory_flat_in_size"]:
        lines.append("- not measured (needs two dataset sizes with results)")
    lines += ["", "JPEG decode + augment, examples/s per host on the largest JPEG dataset (all P processes):", ""]
    for kind, per_p in t["host_examples_per_s_largest_photos"].items():
        cells = ", ".join(f"P={p}: {fmt_rate(v)}" for p, v in per_p.items())
        lines.append(f"- {kind}: {cells or 'failed'}")
    lines += ["", f"- {_train_line(doc)}",
              f"- Rows of the first global batch disjoint between processes in every run: {t['rows_disjoint']}; "
              f"together the global batch wherever checked: {t['rows_cover']}.", ""]
    return lines


def render(doc: Dict[str, Any]) -> str:
    env, plan = doc["environment"], doc["plan"]
    avail = doc.get("memory_available_kib")
    av_spec = doc["av_digits"]["spec"]
    lines = [
        "# Input pipeline per process", "",
        f"{env['date']}, {env['cpu_model']}, {env['cpu_count']} cores, load average {env.get('load_average')}, "
        f"{'-' if avail is None else f'{avail / 2**20:.1f}'} GiB memory available at the start; "
        f"{doc['elapsed_s']:.0f} s in all.", "",
        f"Command: `{doc['command']}`", "",
        f"P real processes are started together, one per process index, each reading its rows (B/P) of the "
        f"same global batches of B. Each takes {plan['warmup']} warm-up batch{'es' if plan['warmup'] > 1 else ''} (the first is timed as 'first "
        f"batch': opening the dataset, and building it where it is built on first use), waits for the others, "
        f"then times its batches. examples/s: one process's own rows (mean and min-max over the P processes); "
        f"host: all P processes' timed rows over the span from the first start to the last end of their timed "
        f"windows. Memory per process: peak RSS (VmHWM: the peak of the process's own address space; "
        f"ru_maxrss, in input.json, also counts the parent's memory at the fork), RSS after imports (before "
        f"the first batch) and growth (peak minus that). Rows: the processes' rows of the first global batch are disjoint "
        f"and together make the global batch (by example id, or by a per-row fingerprint against the P=1 run).",
        "",
        f"## av_digits through mmjax.data.make_iterator, global batch {av_spec['global_batch']}, "
        f"{av_spec['steps']} timed batches", "",
    ]
    lines += _sweep_table(doc["av_digits"])
    lines += [_train_line(doc), ""]
    lines += [f"## 224x224x3 JPEGs, global batch {plan['photo_batch']}, {plan['photo_steps']} timed batches", ""]
    lines += _builds(doc) + [""]
    lines += ["Pipelines: `mmjax make_iterator`: the image modality at size (224, 224) with augment_flip "
              "(normalised float32 batches); `grain + PIL`: Grain MapDataset over the tfds ArrayRecord data "
              f"source, JPEG decode + random resized crop + flip with PIL in {plan['grain_threads']} read threads, "
              "uint8 batches; `plain PIL loop`: the same work one example at a time in one thread (the "
              "reference).", ""]
    for sweep in doc["photos"]["sweeps"]:
        lines += _sweep_table(sweep)
    lines += _targets(doc)
    lines.append(f"Command: `{doc['command']}` (all numbers in input.json).")
    return "\n".join(lines) + "\n"
