"""``python -m experiments sweep EXPERIMENT --workdir DIR [--fusions a,b,...|all] [--seeds N] [--config.KEY=VALUE ...]``.

Trains the experiment once per (fusion block, seed), plus one unimodal
baseline per modality (encoder + head, via the ``modalities`` switch), all
in this process one after another, and writes

* DIR/sweep.json: one row per fusion and baseline: test accuracy (and
  macro-F1) mean and std over seeds, parameter count, train examples/s, wall
  time, and each seed's numbers; and each fusion's paired comparison with the
  best unimodal baseline (per-seed differences);
* DIR/sweep.md: the same as a Markdown table, best first;

Each run selects its checkpoint on the validation split (``eval_split``) and
reports the test split once, from that checkpoint (``results.json["test"]``).
* DIR/sweep.png: accuracy (mean ± std) per row.

Each run lives in DIR/runs/<row>/seed_<k>/ (a normal train workdir); a run that
already finished there (it has results.json) is read back instead of retrained,
so an interrupted sweep continues where it stopped.
"""
from __future__ import annotations

import copy
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional

import numpy as np

from experiments import compilation_cache, modalities
from experiments.commands import train as train_cmd
from experiments.errors import UserError
from mmjax.train import files


def add_parser(subparsers):
    p = train_cmd.make_subparser(subparsers, "sweep", "train every fusion block and the unimodal baselines, N seeds each")
    p.add_argument("--fusions", default=None,
                   help="comma-separated fusion names, or 'all' (default: the experiment's own fusion)")
    p.add_argument("--seeds", type=int, default=1, help="seeds per row (config.seed, config.seed+1, ...)")
    p.add_argument("--no_baselines", action="store_true", help="skip the unimodal baselines")
    p.add_argument("--quiet", action="store_true", help="no per-step training output")
    return p


def fusion_names(spec: Optional[str], config) -> List[str]:
    """``--fusions`` -> names, checked against the fusion registry."""
    from mmjax.fusion import registry

    known = sorted(n for n in registry.FUSION.names() if n != modalities.UNIMODAL)
    if not spec:
        return [config.model.fusion]
    if spec.strip() == "all":
        return known
    names = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [n for n in names if n not in known]
    if bad:
        raise UserError(f"--fusions: unknown fusion {bad}; known: {', '.join(known)} (or 'all')")
    return names


def variants(config, fusions: List[str], baselines: bool) -> Dict[str, Any]:
    """Row name -> config: one per fusion (``fusion_configs[name]`` when the config has it) and baseline.

    ``model.fusion = name`` is all a row sets (``late`` means decision-level fusion by itself); each
    row's model config is resolved here, so a bad combination fails before the first run trains.
    """
    from mmjax.models import fusion_choice

    out = {}
    per_fusion = config.get("fusion_configs") or {}
    for name in fusions:
        c = copy.deepcopy(config)
        with c.ignore_type():
            c.model.fusion = name
            if name in per_fusion:
                c.model.fusion_config = copy.deepcopy(per_fusion[name])
        fusion_choice.resolve(c.model)
        out[name] = c
    mods = sorted(config.model.encoders.keys())
    if baselines and len(mods) > 1:
        for m in mods:
            out[f"{m}_only"] = modalities.restrict(copy.deepcopy(config), (m,))
    return out


def param_count(config, data_fn, info_fn) -> int:
    """Number of parameters of the experiment's model (shapes only: no compute)."""
    import jax

    from mmjax.models.classifier import build_classifier

    model = build_classifier(config.model.to_dict(), int(info_fn(config)["num_classes"]))
    example = next(iter(data_fn(config, "train", global_batch_size=int(config.batch_size), seed=0,
                                train=True, start_step=0)))
    shapes = jax.eval_shape(lambda b: model.init({"params": jax.random.PRNGKey(0),
                                                  "dropout": jax.random.PRNGKey(1)}, b), example)
    import flax.linen as nn

    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nn.unbox(shapes.get("params", {})))))


def _train_speed(workdir: str) -> float:
    """Median examples/s over the logged training records (the first one includes compilation)."""
    path = files.path(workdir) / "metrics.jsonl"  # local or gs://
    speeds = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            if "examples_per_sec" in rec:
                speeds.append(float(rec["examples_per_sec"]))
    if len(speeds) > 1:
        speeds = speeds[1:]
    return float(np.median(speeds)) if speeds else float("nan")


def run_variant(name: str, config, workdir: str, seeds: int, *, data_fn=None, info_fn=None,
                console=None) -> Dict[str, Any]:
    """Trains ``config`` with ``seeds`` seeds under WORKDIR/runs/<name>/ -> its sweep row."""
    from mmjax.data import factory
    from mmjax.train import loop

    data_fn = data_fn or factory.make_data
    info_fn = info_fn or factory.data_info
    row: Dict[str, Any] = {"name": name, "fusion": None if name.endswith("_only") else str(config.model.fusion),
                           "modalities": sorted(config.model.encoders.keys()), "seeds": []}
    base_seed = int(config.get("seed", 0))
    for k in range(seeds):
        c = copy.deepcopy(config)
        c.seed = base_seed + k
        wd = os.path.join(workdir, "runs", name, f"seed_{k}")
        done = files.path(wd) / "results.json"
        t0 = time.perf_counter()
        if done.exists():
            res = json.loads(done.read_text(encoding="utf-8"))
            wall = float(res.get("wall_time_sec", float("nan")))
        else:
            res = loop.train_and_evaluate(c, wd, data_fn=data_fn, info_fn=info_fn, console=console)
            wall = time.perf_counter() - t0
            res = dict(res, wall_time_sec=wall)
            files.write_text(done, json.dumps({k2: v for k2, v in res.items() if k2 != "confusion_matrix"}, indent=2,
                                              default=float))
        test = res.get("test") or res  # the selected checkpoint on the test split (older runs: the eval split)
        row["seeds"].append({"seed": c.seed, "accuracy": float(test["accuracy"]),
                             "validation_accuracy": float(res["accuracy"]),
                             "macro_f1": float(test.get("macro_f1", float("nan"))),
                             "examples_per_sec": _train_speed(wd), "wall_time_sec": wall})
    acc = np.array([s["accuracy"] for s in row["seeds"]])
    f1 = np.array([s["macro_f1"] for s in row["seeds"]])
    row.update(
        accuracy_mean=float(acc.mean()), accuracy_std=float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
        macro_f1_mean=float(f1.mean()),
        params=param_count(config, data_fn, info_fn),
        examples_per_sec=float(np.nanmean([s["examples_per_sec"] for s in row["seeds"]])),
        wall_time_sec=float(np.sum([s["wall_time_sec"] for s in row["seeds"]])),
    )
    return row


def paired_vs_baseline(rows: List[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """Row name -> the per-seed test-accuracy differences with the best unimodal baseline.

    Seeds are paired by position (seed k of a row against seed k of the baseline: the
    same data order and initial draws where the models share them). Returns, per fusion
    row, ``{"baseline", "diffs", "mean", "std", "wins"}``; {} without a baseline.
    """
    baselines = [r for r in rows if r.get("fusion") is None]
    if not baselines:
        return {}
    best = max(baselines, key=lambda r: r["accuracy_mean"])
    base = [s["accuracy"] for s in best["seeds"]]
    out = {}
    for r in rows:
        if r.get("fusion") is None:
            continue
        diffs = [s["accuracy"] - b for s, b in zip(r["seeds"], base)]
        if diffs:
            out[r["name"]] = {"baseline": best["name"], "diffs": diffs, "mean": float(np.mean(diffs)),
                              "std": float(np.std(diffs, ddof=1)) if len(diffs) > 1 else 0.0,
                              "wins": int(sum(d > 0 for d in diffs))}
    return out


def markdown(rows: List[Dict[str, Any]], title: str, command: str = "") -> str:
    """The sweep table, best test accuracy first, with the paired comparison to the best unimodal baseline."""
    lines = [f"# Sweep: {title}", ""]
    if command:
        lines += ["Reproduce with:", "", "```", command, "```", ""]
    paired = paired_vs_baseline(rows)
    base = next(iter(paired.values()))["baseline"] if paired else None
    lines += ["Test accuracy of the checkpoint selected on the validation split, once per run; "
              + (f"Δ: per-seed difference with the best unimodal baseline ({base}), mean ± std, "
                 "and the seeds where the fusion is above it." if base else ""), "",
              "| row | fusion | modalities | test accuracy (mean ± std) | Δ vs best unimodal (wins) | "
              "validation accuracy | macro-F1 | params | train ex/s | wall time (s) | seeds |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: -r["accuracy_mean"]):
        d = paired.get(r["name"])
        delta = f"{d['mean']:+.4f} ± {d['std']:.4f} ({d['wins']}/{len(d['diffs'])})" if d else "-"
        val = [s.get("validation_accuracy") for s in r["seeds"] if s.get("validation_accuracy") is not None]
        lines.append(
            f"| {r['name']} | {r['fusion'] or '(none: unimodal)'} | {'+'.join(r['modalities'])} | "
            f"{r['accuracy_mean']:.4f} ± {r['accuracy_std']:.4f} | {delta} | "
            f"{np.mean(val) if val else float('nan'):.4f} | {r['macro_f1_mean']:.4f} | {r['params']:,} | "
            f"{r['examples_per_sec']:.0f} | {r['wall_time_sec']:.1f} | {len(r['seeds'])} |")
    return "\n".join(lines) + "\n"


def sweep(config, workdir: str, fusions: List[str], seeds: int, *, baselines: bool = True, data_fn=None,
          info_fn=None, console=None, title: str = "", command: str = "") -> List[Dict[str, Any]]:
    """Runs the sweep and writes WORKDIR/sweep.{json,md,png}; returns the rows."""
    from mmjax.train import loop

    compilation_cache.enable()  # the seeds of a row compile the same programs
    if seeds < 1:
        raise UserError(f"--seeds must be >= 1, got {seeds}")
    files.makedirs(workdir)
    rows = []
    info_fn = info_fn or _default_info_fn()
    chance = 1.0 / max(int(info_fn(config)["num_classes"]), 1)
    todo = variants(config, fusions, baselines)
    for i, (name, c) in enumerate(todo.items()):
        print(f"[sweep {i + 1}/{len(todo)}] {name}: {seeds} seed(s)", flush=True)
        try:
            row = run_variant(name, c, workdir, seeds, data_fn=data_fn, info_fn=info_fn, console=console)
        except loop.TrainingDiverged as e:
            print(f"  {name} diverged: {e}", flush=True)
            continue
        print(f"  {name}: accuracy {row['accuracy_mean']:.4f} ± {row['accuracy_std']:.4f}, "
              f"{row['params']:,} params, {row['wall_time_sec']:.1f} s", flush=True)
        rows.append(row)
        _write(rows, workdir, title, command, chance)
    return rows


def _default_info_fn():
    from mmjax.data import factory

    return factory.data_info


def _write(rows, workdir, title, command, chance=None):
    from experiments.reports import plots

    root = files.path(workdir)  # local or gs://
    summary = {"experiment": title, "command": command, "rows": rows, "paired_vs_best_unimodal": paired_vs_baseline(rows)}
    files.write_text(root / "sweep.json", json.dumps(summary, indent=2))
    files.write_text(root / "sweep.md", markdown(rows, title, command))
    plots.sweep_plot(rows, os.fspath(root / "sweep.png"), title=title, chance=chance)


def run(args) -> int:
    config = train_cmd.prepare(args)
    modalities.restrict(config)
    names = fusion_names(args.fusions, config)
    command = "python -m experiments sweep " + args.experiment + f" --workdir {args.workdir}" + (
        f" --fusions {args.fusions}" if args.fusions else "") + f" --seeds {args.seeds}" + "".join(
        f" --config.{k}={v}" for k, v in args.overrides)
    console = None if args.quiet else sys.stdout
    sweep(config, args.workdir, names, args.seeds, baselines=not args.no_baselines,
          console=console, title=args.experiment, command=command)
    print(f"wrote {os.path.join(args.workdir, 'sweep.md')}, sweep.json, sweep.png")
    return 0
