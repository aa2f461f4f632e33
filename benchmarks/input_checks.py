"""What ``bench input`` derives from the per-process results: the rows check, summaries, targets.

Pure functions of the JSON the workers wrote (:mod:`benchmarks.input_pipeline`),
so they are tested without starting processes.
"""
from __future__ import annotations

import statistics
from collections import Counter
from typing import Any, Dict, List, Optional

# A per-process memory ratio at or below this counts as "roughly flat".
FLAT = 1.25
# The av_digits pipeline must deliver at least this many times the train step's examples/s.
PIPELINE_OVER_TRAIN = 5.0


def _keys(first_batch: Dict[str, Any], by: str) -> List[Any]:
    return list(first_batch["ids"] if by == "id" else first_batch["fingerprints"])


def rows_check(run: Dict[str, Any], reference: Optional[Dict[str, Any]],
               expected_ids: Optional[List[int]] = None) -> Optional[Dict[str, Any]]:
    """Are the P processes' rows of the first global batch disjoint, and together the global batch?

    By example id when every process's batch carries ids, else by row
    fingerprint. The global batch is ``expected_ids`` when given, else the
    P = 1 run's first batch (``reference``); ``covers_global_batch`` is None
    when there is neither. None for a failed run.
    """
    if run.get("error") or not run.get("processes"):
        return None
    batches = [p["first_batch"] for p in run["processes"]]
    by = "id" if all(b["ids"] is not None for b in batches) else "fingerprint"
    keys = [_keys(b, by) for b in batches]
    owners = Counter(k for ks in keys for k in set(ks))
    disjoint = all(c == 1 for c in owners.values())
    if by == "id" and expected_ids is not None:
        whole: Optional[List[Any]] = list(expected_ids)
    elif reference and reference.get("processes") and (by == "fingerprint" or reference["processes"][0]["first_batch"]["ids"] is not None):
        whole = _keys(reference["processes"][0]["first_batch"], by)
    else:
        whole = None
    covers = None if whole is None else sorted(k for ks in keys for k in ks) == sorted(whole)
    return {"by": by, "rows": [len(k) for k in keys], "disjoint": disjoint, "covers_global_batch": covers,
            "labels": [b["labels"] for b in batches]}


def summarize_run(run: Dict[str, Any]) -> Dict[str, Any]:
    """Per-process means / extremes of one run (empty for a failed run); memory in MiB."""
    procs = run.get("processes") or []
    if run.get("error") or not procs:
        return {}
    rates = [p["examples_per_s"] for p in procs if p["examples_per_s"] is not None]

    def mib(key: str, how) -> float:
        return how([p[key] for p in procs]) / 1024

    # All rows over the span from the first start to the last end of the timed windows.
    span = max(p["timed_end_unix"] for p in procs) - min(p["timed_start_unix"] for p in procs)
    rows = sum(p["rows_timed"] for p in procs)

    return {
        "rows_per_process": procs[0]["rows_per_batch"],
        "examples_per_s_mean": statistics.mean(rates) if rates else None,
        "examples_per_s_min": min(rates) if rates else None,
        "examples_per_s_max": max(rates) if rates else None,
        "host_examples_per_s": rows / span if span > 0 else None,
        "sum_of_process_examples_per_s": sum(rates) if rates else None,
        "peak_rss_mib_mean": mib("peak_rss_kib", statistics.mean),
        "peak_rss_mib_max": mib("peak_rss_kib", max),
        "rss_after_imports_mib_mean": mib("rss_after_imports_kib", statistics.mean),
        "rss_growth_mib_mean": mib("rss_growth_kib", statistics.mean),
        "first_batch_s_max": max(p["first_batch_s"] for p in procs),
        "peak_total_rss_mib": run.get("peak_total_rss_kib", 0) / 1024,
    }


def _by_p(sweep: Dict[str, Any]) -> Dict[int, Dict[str, Any]]:
    return {r["P"]: r["summary"] for r in sweep["runs"] if r.get("summary")}


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if a is None or b is None or b == 0 else a / b


def memory_in_p(sweep: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """Peak RSS per process at the largest P over P = 1."""
    s = _by_p(sweep)
    if 1 not in s or len(s) < 2:
        return None
    top = max(s)
    ratio = _ratio(s[top]["peak_rss_mib_mean"], s[1]["peak_rss_mib_mean"])
    return {"sweep": sweep["name"], "P": top, "peak_rss_mib_P1": s[1]["peak_rss_mib_mean"],
            "peak_rss_mib_top": s[top]["peak_rss_mib_mean"], "ratio": ratio, "flat": ratio <= FLAT}


def memory_in_size(small: Dict[str, Any], large: Dict[str, Any], n_small: int, n_large: int) -> List[Dict[str, Any]]:
    """Per P, the peak RSS per process on the larger dataset over the smaller one."""
    a, b = _by_p(small), _by_p(large)
    out = []
    for p in sorted(set(a) & set(b)):
        ratio = _ratio(b[p]["peak_rss_mib_mean"], a[p]["peak_rss_mib_mean"])
        out.append({"P": p, "examples": [n_small, n_large], "peak_rss_mib": [a[p]["peak_rss_mib_mean"],
                    b[p]["peak_rss_mib_mean"]], "ratio": ratio, "flat": ratio <= FLAT})
    return out


def targets(doc: Dict[str, Any]) -> Dict[str, Any]:
    """The issue's targets, evaluated on a finished run (see the module docstring of input_bench)."""
    av = _by_p(doc["av_digits"])
    train = doc["av_digits_train_step"]
    train_rate = train.get("examples_per_s")
    vs_train = {"train_examples_per_s": train_rate, "target": PIPELINE_OVER_TRAIN,
                "per_P": {str(p): _ratio(s["examples_per_s_mean"], train_rate) for p, s in av.items()}}
    vs_train["ratio"] = train.get("ratio")  # interleaved in one process (benchmarks.input_vs_train)
    vs_train["met"] = None if vs_train["ratio"] is None else vs_train["ratio"] >= PIPELINE_OVER_TRAIN
    sweeps = doc["photos"]["sweeps"]
    in_p = [m for m in (memory_in_p(s) for s in [doc["av_digits"]] + sweeps) if m]
    sizes = sorted(doc["plan"]["photo_sizes"])
    in_size = {}
    if len(sizes) >= 2:
        for kind in ("mmjax", "grain"):
            found = {int(s["spec"]["num_examples"]): s for s in sweeps if s["spec"]["pipeline"] == kind}
            if sizes[0] in found and sizes[-1] in found:
                in_size[kind] = memory_in_size(found[sizes[0]], found[sizes[-1]], sizes[0], sizes[-1])
    decode = {}
    for s in sweeps:
        if int(s["spec"]["num_examples"]) == sizes[-1] and s["spec"]["pipeline"] in ("grain", "pil", "mmjax"):
            decode[s["spec"]["pipeline"]] = {str(p): v["host_examples_per_s"] for p, v in _by_p(s).items()}
    checks_ok = [r["rows_check"] for s in [doc["av_digits"]] + sweeps for r in s["runs"] if r.get("rows_check")]
    return {
        "pipeline_over_train_step": vs_train,
        "memory_flat_in_P": in_p, "memory_flat_in_size": in_size, "flat_threshold": FLAT,
        "host_examples_per_s_largest_photos": decode,
        "rows_disjoint": all(c["disjoint"] for c in checks_ok) if checks_ok else None,
        "rows_cover": all(c["covers_global_batch"] is not False for c in checks_ok) if checks_ok else None,
    }
