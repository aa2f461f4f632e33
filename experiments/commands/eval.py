"""``python -m experiments eval --workdir DIR [--latest] [--split S] [--noise_levels ...] [--config.KEY=VALUE ...]``.

Reads the run's config from DIR/config.json (``--config`` flags override it),
restores DIR's best checkpoint (selected on ``config.eval_split`` by
``checkpoint.best_metric``; ``--latest`` for the most recent), evaluates it on
``config.test_split`` (``--split`` for another) and writes to DIR/eval/:

* metrics.json: loss, accuracy, macro-F1, per-class precision/recall/F1,
  confusion matrix, ROC-AUC one-vs-rest (macro and per class), and the
  modality analysis: accuracy with each modality masked out
  (``modality_mask`` False) and with Gaussian noise added to one modality at
  a time (std = level x that input's std over the eval set);
* confusion_matrix.png, roc.png (one-vs-rest curves), robustness.png.

``--explain N`` also writes per-example explanations of the first N examples
(modality Shapley values, integrated gradients, attention maps) to
DIR/eval/explain/example_<i>/, as ``python -m experiments explain`` does.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional, Sequence

from experiments import modalities
from experiments.commands import train as train_cmd
from experiments.errors import UserError
from mmjax.train import files
from mmjax.train import logging as log_lib


def add_parser(subparsers):
    p = train_cmd.make_subparser(subparsers, "eval", "evaluate the best (or latest) checkpoint of a run, with plots")
    p.add_argument("--latest", action="store_true", help="use the latest checkpoint instead of the best")
    p.add_argument("--noise_levels", default="0,0.25,0.5,1,2",
                   help="comma-separated noise stds relative to each input's std (robustness analysis)")
    p.add_argument("--no_plots", action="store_true", help="metrics.json only")
    p.add_argument("--explain", type=int, default=0, metavar="N",
                   help="also explain the first N examples into eval/explain/ (see `explain --help`)")
    p.add_argument("--split", default=None, help="split to evaluate (default: config.test_split, else eval_split)")
    return p


def _levels(text: str):
    try:
        levels = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UserError(f"--noise_levels: expected comma-separated numbers, got {text!r}") from None
    if not levels or any(v < 0 for v in levels):
        raise UserError(f"--noise_levels: need one or more non-negative numbers, got {text!r}")
    return levels


def evaluate(config, workdir: str, *, which: str = "best", noise_levels: Sequence[float] = (0.0, 0.25, 0.5, 1.0, 2.0),
             plots: bool = True, data_fn=None, info_fn=None, console=log_lib.STDOUT,
             split: Optional[str] = None, explain: int = 0) -> Dict[str, Any]:
    """Full evaluation of WORKDIR's checkpoint; writes WORKDIR/eval/ and returns the metrics dict."""
    console = log_lib.resolve_console(console)
    import jax
    import numpy as np

    from experiments.reports import analysis
    from mmjax.data import factory
    from mmjax.train import builder, evaluation, selection
    from mmjax.train.config_access import setting

    data_fn = data_fn or factory.make_data
    info_fn = info_fn or factory.data_info
    info = info_fn(config)
    if str(setting(config, "task")) != "classification":
        # Contrastive / captioning runs have their own metrics (retrieval, BLEU, samples.md).
        out = evaluation.evaluate(config, workdir, which=which, split=split, data_fn=data_fn, info_fn=info_fn)
        if console is not None:
            print(f"wrote {files.path(workdir) / 'eval'}/metrics.json", file=console)
        return out
    num_classes = int(info["num_classes"])
    config, _ = selection.resolve(config, info)  # "validation" held out of train where the dataset has none
    class_names = list(info.get("class_names") or []) or None
    runner = builder.build(config, num_classes, info)
    for d in (workdir, os.path.join(workdir, "eval")):  # read-only or full storage: found now, not after the eval
        if jax.process_index() == 0 and os.path.isdir(d):
            files.check_writable(d)
    ckpt = builder.open_checkpoints(config, workdir, for_eval=True)
    seed = int(setting(config, "seed"))
    split = split or setting(config, "test_split") or setting(config, "eval_split")
    try:
        evaluation.selected_step(ckpt, which)  # no checkpoint at all: said before the data is read
        batches = analysis.collect(
            data_fn(config, split, global_batch_size=int(config.batch_size), seed=seed, train=False, start_step=0),
            int(setting(config, "eval_steps")) or None, image_norms=info.get("image_norms"))
        # A damaged checkpoint is set aside (a line on stderr) and the next one is evaluated, as training does.
        step, state = evaluation.restore_selected(runner, ckpt, which, batches[0], config)
    finally:
        ckpt.close()
    # Every process predicts its rows in the run's parallel mode; the metrics see the whole split's.
    predict = analysis.runner_predict_fn(runner, state)
    labels, logits, weights = analysis.run_predictions(predict, batches)
    out: Dict[str, Any] = {"step": int(step), "checkpoint": which, "eval_split": split,
                           **analysis.full_metrics(labels, logits, weights, class_names)}
    out["robustness"] = analysis.robustness(predict, batches, noise_levels, seed=seed)
    if jax.process_index() != 0:
        return out
    eval_dir = os.fspath(files.path(workdir) / "eval")  # local or gs://, written through mmjax.train.files
    files.write_text(os.path.join(eval_dir, "metrics.json"),
                     json.dumps(out, indent=2, default=lambda x: np.asarray(x).tolist()))
    if plots:
        from experiments.reports import plots as plots_lib

        fusion = config.model.get("fusion") if "model" in config else None
        subtitle = f"{files.display(workdir)}, step {step} ({which}), fusion {fusion}, {split} split"
        paths = {"confusion_matrix": plots_lib.confusion_plot(np.asarray(out["confusion_matrix"]),
                                                              os.path.join(eval_dir, "confusion_matrix.png"),
                                                              class_names, subtitle=subtitle),
                 "roc": plots_lib.roc_plot(analysis.roc_curves(labels, logits, weights, class_names),
                                           os.path.join(eval_dir, "roc.png"), subtitle=subtitle),
                 "robustness": plots_lib.robustness_plot(out["robustness"], os.path.join(eval_dir, "robustness.png"),
                                                         subtitle=subtitle, chance=1.0 / num_classes)}
        if setting(config, "tensorboard"):
            _plots_to_tensorboard(workdir, paths, step)
    if explain > 0:
        from experiments.commands import explain as explain_cmd

        variables = jax.device_get(runner.host_state(state).variables)
        explain_cmd.explain_eval_examples(config, info, runner.model, variables, batches, explain,
                                          os.path.join(eval_dir, "explain"), class_names, plots=plots)
        if console is not None:
            print(f"wrote {eval_dir}/explain/example_*/ ({explain} examples)", file=console)
    if console is not None:
        r = out["robustness"]
        print(f"eval of step {step} ({which}) on {split}: accuracy {out['accuracy']:.4f}, macro-F1 "
              f"{out['macro_f1']:.4f}, ROC-AUC {out['roc_auc_ovr']:.4f}", file=console)
        for m, acc in r["masked"].items():
            print(f"  without {m}: accuracy {acc:.4f}", file=console)
        for m, curve in r["noise"].items():
            print(f"  noise on {m}: " + ", ".join(f"{float(k):g}x std -> {v:.3f}" for k, v in curve.items()),
                  file=console)
        print(f"wrote {eval_dir}/metrics.json" + (", confusion_matrix.png, roc.png, robustness.png" if plots else ""),
              file=console)
    return out


def _plots_to_tensorboard(workdir: str, paths: Dict[str, str], step: int) -> None:
    """The eval plots as TensorBoard images (``eval/<name>``) beside the run's training curves."""
    import numpy as np
    from PIL import Image

    writer = log_lib.MetricWriter(workdir, console=None)
    try:
        for name, path in paths.items():
            with files.path(path).open("rb") as f:
                image = np.asarray(Image.open(f).convert("RGB"))
            writer.write_image(f"eval/{name}", image, step)
    finally:
        writer.close()


def run(args) -> int:
    config = train_cmd.prepare(args)
    modalities.restrict(config)
    levels = _levels(args.noise_levels)
    evaluate(config, args.workdir, which="latest" if args.latest else "best", noise_levels=levels,
             plots=not args.no_plots, split=args.split, explain=args.explain)
    return 0
