"""mmjax / PyTorch ratios across several ``bench fusion`` runs: median and range.

On a shared machine one run's ratio can move by 10-20% from the next even with
interleaved timing; the median over runs, with its range, is what
``benchmarks/RESULTS.md`` reports. ``python -m experiments bench fusion --runs 3``
makes the runs and the table in one go; runs made separately are aggregated with::

    python -m benchmarks.fusion_runs RUN1/fusion.json RUN2/fusion.json RUN3/fusion.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

GROUPS = ("batch", "tokens", "large")


def _key(row: Mapping[str, Any]) -> Tuple[str, str, int, Optional[int]]:
    return row["block"], row["group"], row["batch"], row.get("token_length")


def ratios_across_runs(docs: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """Per (block, group, batch, tokens) row with a PyTorch comparison: the eager
    fwd / train ratios of every run, in the order of ``docs``."""
    rows: Dict[Tuple[str, str, int, Optional[int]], Dict[str, Any]] = {}
    for doc in docs:
        for r in doc["results"]:
            if r.get("group") not in GROUPS or "ratio" not in r:
                continue
            entry = rows.setdefault(_key(r), {"block": r["block"], "group": r["group"], "batch": r["batch"],
                                              "token_length": r.get("token_length"), "fwd": [], "train": []})
            for phase in ("fwd", "train"):
                v = r["ratio"].get(f"{phase}_eager")
                if v is not None:
                    entry[phase].append(v)
    return [rows[k] for k in sorted(rows, key=lambda k: (k[0], GROUPS.index(k[1]), k[2], k[3] or 0))]


def _cell(values: Sequence[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def render(docs: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table: median (min-max) of the mmjax / PyTorch eager ratios over ``docs``."""
    lines = [f"mmjax / PyTorch eager over {len(docs)} runs: median (min-max)", "",
             "| block | group | batch | T | fwd | train |", "|---|---|---|---|---|---|"]
    for e in ratios_across_runs(docs):
        lines.append(f"| {e['block']} | {e['group']} | {e['batch']} | {e['token_length'] or ''} "
                     f"| {_cell(e['fwd'])} | {_cell(e['train'])} |")
    return "\n".join(lines) + "\n"


def run_repeated(out_dir: str, runs: int, run_once: Callable[[str, bool], Mapping[str, Any]],
                 log: Callable[[str], None] = print) -> str:
    """Runs the benchmark ``runs`` times and writes the median-and-range table; -> its path.

    Run 1 writes ``out_dir`` (with plots); run k > 1 writes ``out_dir/repeats/run-k``
    (no plots). ``run_once(directory, plots)`` runs the grid once and returns its
    JSON document. The table goes to ``out_dir/fusion_runs.md``.
    """
    if runs < 1:
        raise ValueError(f"--runs must be >= 1, got {runs}")
    docs = []
    for k in range(1, runs + 1):
        if runs > 1:
            log(f"== run {k}/{runs}")
        directory = out_dir if k == 1 else os.path.join(out_dir, "repeats", f"run-{k}")
        docs.append(run_once(directory, k == 1))
    path = os.path.join(out_dir, "fusion_runs.md")
    with open(path, "w") as f:
        f.write(render(docs))
    log(f"wrote {path} (median and range of the ratios over {runs} run{'s' if runs > 1 else ''})")
    return path


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="fusion.json files of bench fusion runs on the same grid")
    args = p.parse_args(argv)
    docs = []
    for path in args.runs:
        with open(path) as f:
            doc = json.load(f)
        if doc.get("benchmark") != "fusion_throughput":
            raise SystemExit(f"{path}: not a bench fusion result (benchmark={doc.get('benchmark')!r})")
        docs.append(doc)
    print(render(docs), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
