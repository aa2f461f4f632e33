"""fusion.md: the Markdown tables of one ``bench fusion`` run, from its JSON document."""
from __future__ import annotations

from typing import Any, List, Mapping, Optional, Sequence

from benchmarks.common import fmt_bytes, fmt_rate, nested_get as _get
from benchmarks.fusion_specs import render_catalogue
from benchmarks.fusion_summary import LMF_PAPER_SPEEDUP, measured


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


def _header(doc: Mapping[str, Any]) -> List[str]:
    """Title, environment, peak and method notes, then the "Blocks" catalogue."""
    env, peak, results = doc["environment"], doc["peak"], doc["results"]
    return [
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
    ]


def _batch_table(doc: Mapping[str, Any]) -> List[str]:
    """Throughput vs batch: mmjax, PyTorch eager and torch.compile per phase."""
    grid = doc["grid"]
    lines = [
        "## Throughput vs batch (two modalities, dims "
        f"{grid['batch_dims']}, out_dim {grid['out_dim']}; attention blocks T={grid['token_length']})",
        "",
        "| block | batch | params | fwd mmjax | fwd torch | fwd torch.compile | fwd ratio | train mmjax | train torch "
        "| train torch.compile | train ratio | compile s (fwd/train) | train memory |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["results"]:
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
    return lines


def _compile_ratios(results: Sequence[Mapping[str, Any]]) -> List[str]:
    lines = ["", "torch.compile ratios (mmjax / compiled PyTorch), where measured:", ""]
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
    return lines


def _cost_table(results: Sequence[Mapping[str, Any]]) -> List[str]:
    """Analytic vs XLA FLOPs and achieved FLOP/s, at each block's largest batch and the other groups."""
    lines = [
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
        if r["group"] == "batch" and r["batch"] != max(x["batch"] for x in measured(results, "batch", r["block"])):
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
    return lines


def _large_table(doc: Mapping[str, Any]) -> List[str]:
    """Block ratio next to the square-matmul ratio timed in the same rounds (large sizes)."""
    large = [r for r in measured(doc["results"], "large") if "ratio" in r]
    if not large:
        return []
    lines = ["", "At the large sizes each phase is timed in the same rounds as a square "
             f"{doc['grid']['peak_n']}² matmul in jax and in PyTorch; where one framework's own GEMM "
             "is faster, that bounds the block's ratio:", "",
             "| block | phase | mmjax / PyTorch (block) | jax / PyTorch (square matmul) |", "|---|---|---|---|"]
    for r in large:
        for phase in ("fwd", "train"):
            mm = _get(r, "jax", phase, "matmul_flops_per_s") or {}
            mm_ratio = mm["jax"] / mm["torch"] if mm.get("jax") and mm.get("torch") else None
            lines.append(f"| {r['block']} | {phase} | {_x(_get(r, 'ratio', f'{phase}_eager'))} | {_x(mm_ratio)} |")
    return lines


def _scaling_tables(results: Sequence[Mapping[str, Any]], summary: Mapping[str, Any]) -> List[str]:
    """Cost vs number of modalities and vs dim, and the growth of the model FLOPs."""
    lines: List[str] = []
    for group, title in (("modalities", "Scaling with the number of modalities"),
                         ("dims", "Scaling with the per-modality dim (two modalities)")):
        rows = measured(results, group)
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
    return lines


def _token_table(results: Sequence[Mapping[str, Any]]) -> List[str]:
    token_rows = measured(results, "tokens")
    if not token_rows:
        return []
    lines = ["", "## Attention blocks vs token length", "",
             "| block | batch | T | train mmjax ex/s | train torch ex/s | ratio | train memory |",
             "|---|---|---|---|---|---|---|"]
    for r in token_rows:
        lines.append(f"| {r['block']} | {r['batch']} | {r['token_length']} "
                     f"| {fmt_rate(r['jax']['train']['examples_per_s'])} | {_torch_cell(r, 'eager', 'train')} "
                     f"| {_x(_get(r, 'ratio', 'train_eager'))} | {fmt_bytes(_get(r, 'jax', 'train', 'memory', 'total'))} |")
    return lines


def _speedup_section(summary: Mapping[str, Any]) -> List[str]:
    """low_rank (LMF) over tensor (TFN), next to the LMF paper's figure."""
    sp = summary.get("low_rank_over_tensor", [])
    lines = ["", "## low_rank (LMF) over tensor (TFN) at the same sizes", "",
             f"The LMF paper reports about {LMF_PAPER_SPEEDUP['train']}x faster training and "
             f"{LMF_PAPER_SPEEDUP['inference']}x faster inference than TFN (the paper's figure, on its own "
             "tasks, sizes and hardware); ours is measured here, on the sizes below, with mmjax's TFN "
             "contracting mode by mode rather than materialising the outer product.", ""]
    if not sp:
        return lines + ["(not measured: tensor and low_rank were not both in this run)"]
    lines += ["| group | batch | dims | out | train speed-up | fwd speed-up | params tensor/low_rank |",
              "|---|---|---|---|---|---|---|"]
    for s in sp:
        lines.append(f"| {s['group']} | {s['batch']} | {s['dims']} | {s['out_dim']} | {_x(s.get('train'))} "
                     f"| {_x(s.get('fwd'))} | {_x(s['params_ratio'])} |")
    return lines


def _targets_section(summary: Mapping[str, Any]) -> List[str]:
    t = summary["targets"]
    lines = ["", "## Targets", "",
             f"Targets: mmjax >= PyTorch (ratio >= {t['ratio_at_least']}) at every size, >= "
             f"{t['small_batch_ratio_at_least']}x at the smallest batch, matmul-heavy blocks >= "
             f"{100 * t['matmul_peak_share_at_least']:.0f}% of the measured matmul peak at large sizes.", "",
             f"### Missed ({len(t['missed'])})", ""]
    lines += [f"- {m}" for m in t["missed"]] or ["- none"]
    lines += ["", f"### Met ({len(t['met'])})", ""]
    lines += [f"- {m}" for m in t["met"]] or ["- none"]
    return lines


def _errors_section(results: Sequence[Mapping[str, Any]]) -> List[str]:
    """Failed cases, and each block's PyTorch failure once."""
    errors = [r for r in results if "error" in r]
    torch_errors = [r for r in results if _get(r, "torch", "error")]
    if not (errors or torch_errors):
        return []
    lines = ["", "## Errors", ""]
    lines += [f"- {r['block']} {r['group']} batch {r['batch']} dims {r['dims']}: {r['error']}" for r in errors]
    seen = set()
    for r in torch_errors:
        key = (r["block"], r["torch"]["error"])
        if key not in seen:
            seen.add(key)
            lines.append(f"- PyTorch {r['block']}: {r['torch']['error']}")
    return lines


def render_markdown(doc: Mapping[str, Any]) -> str:
    """The tables of fusion.md."""
    results, summary = doc["results"], doc["summary"]
    lines = [
        *_header(doc),
        *_batch_table(doc),
        *_compile_ratios(results),
        *_cost_table(results),
        *_large_table(doc),
        *_scaling_tables(results, summary),
        *_token_table(results),
        *_speedup_section(summary),
        *_targets_section(summary),
        *_errors_section(results),
    ]
    return "\n".join(lines) + "\n"
