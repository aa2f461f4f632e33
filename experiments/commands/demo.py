"""``python -m experiments demo [--workdir DIR] [--steps N]``: the av_digits fusion demo (what ``make demo`` runs).

1. builds the ``av_digits`` dataset if it is not there yet (with progress bars);
2. trains the default fusion model of the ``av_digits`` experiment on CPU and
   evaluates it (DIR/fusion/eval/: metrics.json, confusion matrix, ROC curves,
   robustness to a masked or noisy modality);
3. trains the image-only and audio-only baselines with the same budget;
4. prints fusion vs image-only vs audio-only test accuracy and writes DIR/demo.md.
"""
from __future__ import annotations

import json
import os
import sys
import time

from experiments import config_utils, modalities
from experiments.errors import UserError
from mmjax.train import files


def add_parser(subparsers):
    p = subparsers.add_parser("demo", help="av_digits: fusion vs unimodal baselines in a few CPU minutes",
                              description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default=os.path.join("runs", "demo"), help="where runs and the report go (default runs/demo)")
    p.add_argument("--steps", type=int, default=None, help="training steps per model (default: the config's)")
    p.add_argument("--fresh", action="store_true", help="retrain even if DIR holds finished runs")
    return p


def _ensure_data(config) -> None:
    from mmjax.data import source
    from mmjax.data.config import resolve_data_dir

    print(f"[demo] dataset {config.data.name} in {resolve_data_dir(config.data.get('data_dir'))} "
          "(built on first use: about 2 minutes)", flush=True)
    t = time.time()
    source.builder(config.data)
    print(f"[demo] dataset ready ({time.time() - t:.0f} s)", flush=True)


def _train(name: str, config, workdir: str, fresh: bool) -> dict:
    from mmjax.train import loop

    done = os.path.join(workdir, "results.json")
    if os.path.exists(done) and not fresh:
        with open(done, encoding="utf-8") as f:
            print(f"[demo] {name}: reusing the finished run in {workdir}", flush=True)
            return json.load(f)
    if fresh and os.path.isdir(workdir):
        import shutil

        shutil.rmtree(workdir)
    t = time.time()
    print(f"[demo] training {name}: {config.total_steps} steps of {config.batch_size} examples", flush=True)
    res = loop.train_and_evaluate(config, workdir, console=sys.stdout)
    res = dict(res, wall_time_sec=time.time() - t)
    print(f"[demo] {name}: test accuracy {res['test']['accuracy']:.4f} ({res['wall_time_sec']:.0f} s)", flush=True)
    files.write_text(done, json.dumps(res, indent=2, default=float))  # whole or not at all: it marks the model done
    return res


def run(args) -> int:
    from experiments.commands import eval as eval_cmd

    t0 = time.time()
    base = config_utils.load_config("av_digits")
    if args.steps is not None:
        if args.steps < 1:
            raise UserError(f"--steps must be >= 1, got {args.steps}")
        base.total_steps = args.steps
    base.log_every = max(1, base.total_steps // 5)
    try:
        _ensure_data(base)
    except Exception as e:  # the data branch reports missing wheels etc. in its own words
        raise UserError(f"could not build av_digits: {type(e).__name__}: {e}") from None
    runs = {
        "fusion": (f"fusion ({base.model.fusion})", base),
        "image": ("image only", modalities.restrict(config_utils.load_config("av_digits"), ("image",))),
        "audio": ("audio only", modalities.restrict(config_utils.load_config("av_digits"), ("audio",))),
    }
    for _, c in runs.values():
        c.total_steps, c.log_every = base.total_steps, base.log_every
    results = {}
    for key, (label, c) in runs.items():
        results[key] = _train(label, c, os.path.join(args.workdir, key), args.fresh)
        if key == "fusion":
            print("[demo] evaluating the fusion model (metrics, plots, modality robustness)", flush=True)
            results["fusion_eval"] = eval_cmd.evaluate(c, os.path.join(args.workdir, key), which="latest")
    total = time.time() - t0
    # The test split of each run's selected checkpoint (chosen on validation).
    rows = [(label, results[key]["test"]["accuracy"], results[key]["test"].get("macro_f1", float("nan")))
            for key, (label, _) in runs.items()]
    ev = results["fusion_eval"]["robustness"]
    lines = ["| model | test accuracy | macro-F1 |", "|---|---|---|"]
    lines += [f"| {label} | {acc:.4f} | {f1:.4f} |" for label, acc, f1 in rows]
    table = "\n".join(lines)
    report = os.path.join(args.workdir, "fusion", "eval")
    text = (f"# av_digits demo\n\n{table}\n\n{base.total_steps} steps of batch {base.batch_size} per model; "
            f"total {total:.0f} s.\n\nFusion model without image: {ev['masked'].get('image', float('nan')):.4f}, "
            f"without audio: {ev['masked'].get('audio', float('nan')):.4f}.\n\nReport: {report}/ "
            "(metrics.json, confusion_matrix.png, roc.png, robustness.png)\n")
    files.write_text(os.path.join(args.workdir, "demo.md"), text)
    print("\n" + table)
    print(f"\n[demo] done in {total:.0f} s; report in {report}/ and {os.path.join(args.workdir, 'demo.md')}")
    return 0
