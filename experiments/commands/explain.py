"""``python -m experiments explain --workdir DIR MODALITY=VALUE ... [--out DIR] [--class NAME] [--latest]``.

Explains the prediction of DIR's trained classifier (``mmjax.load``) on one
example given as ``MODALITY=VALUE`` pairs (as ``predict`` takes them: image
PNG/JPEG, audio WAV, text as the string itself, vectors as a .npy file or
comma-separated numbers; a modality left out is missing). Writes to
``--out`` (default DIR/explain/) one folder per example, ``example_0/``:

* contributions.json / contributions.png: exact Shapley values of the modalities
  (masking them), for the probability (``--value logit``: the logit) of the
  predicted class (``--class``: that class); they add up to v(all) - v(none);
* saliency_<m>.png / .npy: integrated gradients over each float input from a
  zero baseline (image: heatmap over the normalised image; audio: over the
  waveform; vector: per feature), with the completeness gap in explanation.json;
* attention.json / attention_<k>.png: the weights of every attention fusion
  block (mean over heads in the PNG), when the model has one;
* explanation.json: prediction, probabilities and an index of the above.

``python -m experiments eval --explain N`` writes the same for the first N
eval examples under DIR/eval/explain/.
"""
from __future__ import annotations

import io
import json
import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

from experiments.errors import UserError

DEFAULT_STEPS = 256


def add_parser(subparsers):
    p = subparsers.add_parser("explain", help="explain one prediction: modality contributions, saliency, attention",
                              description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True, help="the trained run's directory")
    p.add_argument("inputs", nargs="*", metavar="MODALITY=VALUE", help="one input per modality")
    p.add_argument("--out", default=None, help="output folder (default WORKDIR/explain)")
    p.add_argument("--class", dest="class_name", default=None, help="explain this class (default: the predicted one)")
    p.add_argument("--latest", action="store_true", help="use the latest checkpoint instead of the best")
    add_options(p)
    return p


def add_options(p) -> None:
    """The options ``explain`` and ``eval --explain`` share."""
    p.add_argument("--value", choices=("probability", "logit"), default="probability",
                   help="what the explanations explain: the class probability (default) or its logit")
    p.add_argument("--ig_steps", type=int, default=DEFAULT_STEPS,
                   help=f"integrated-gradients path points (default {DEFAULT_STEPS}; the gap is reported)")


def parse_inputs(pairs: Sequence[str], kinds: Mapping[str, str]) -> Dict[str, Any]:
    """``["image=x.png", "b=1,2,3"]`` -> {modality: value}: text as given, comma lists of numbers as
    float32 arrays, anything else a path (mmjax.inference reads it and reports a bad one)."""
    out: Dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise UserError(f"inputs are MODALITY=VALUE, got {pair!r}")
        if name in out:
            raise UserError(f"modality {name!r} given twice")
        if kinds.get(name) not in ("text", None) and "," in value and not os.path.exists(value):
            try:
                out[name] = np.array([float(v) for v in value.split(",")], np.float32)
            except ValueError:
                raise UserError(f"modality {name!r}: expected a file or comma-separated numbers, got {value!r}") from None
        else:
            out[name] = value
    return out


def class_index(name: Optional[str], class_names: Sequence[str]) -> Optional[int]:
    """--class NAME (or its index) -> index; None when not given."""
    if name is None:
        return None
    names = [str(c) for c in class_names]
    if name in names:
        return names.index(name)
    if name.isdigit() and int(name) < len(names):
        return int(name)
    raise UserError(f"--class {name!r} is not one of the classes: {', '.join(names)}")


def _write_json(path: str, obj: Any) -> None:
    from mmjax.train import files

    files.write_text(path, json.dumps(obj, indent=2, default=lambda x: np.asarray(x).tolist()))


def _write_npy(path: str, array: np.ndarray) -> None:
    from mmjax.train import files

    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array, np.float32))
    files.write_bytes(path, buffer.getvalue())


def compute(logits_fn: Callable, model, variables, batch: Mapping[str, Any], modalities: Sequence[str],
            kinds: Mapping[str, str], *, target: Optional[int] = None, value: str = "probability",
            steps: int = DEFAULT_STEPS) -> Dict[str, Any]:
    """All explanations of a model-ready batch (B examples, float/normalised inputs).

    Returns {"logits": (B, C), "target": (B,), "shapley": [B dicts], "saliency": {m: IntegratedGradients},
    "attention": {path: (B, heads, Tq, Tk)}}; saliency covers the float inputs among ``modalities``.
    """
    import jax

    from mmjax import explain

    batch = {k: batch[k] for k in ("inputs", "token_mask", "modality_mask") if batch.get(k)}
    jitted = jax.jit(logits_fn)
    logits = np.asarray(jitted(batch), np.float32)
    tgt = np.argmax(logits, -1) if target is None else np.full(len(logits), target)
    shapley = explain.shapley_values(jitted, batch, modalities=modalities, target=tgt, value=value)
    saliency = {}
    for m in modalities:
        x = np.asarray(batch["inputs"][m])
        if kinds.get(m) == "text" or not np.issubdtype(x.dtype, np.floating):
            continue
        f = explain.input_value_fn(logits_fn, batch, m, tgt, value=value)
        saliency[m] = explain.integrated_gradients(f, x, steps=steps)
    attention = explain.attention_maps(model, variables, batch)
    return {"logits": logits, "target": tgt, "shapley": shapley, "saliency": saliency, "attention": attention}


def _saliency_plot(kind: str, x: np.ndarray, attr: np.ndarray, path: str, title: str, sample_rate: int) -> None:
    from experiments.reports import explain_plots

    if kind == "image" or x.ndim == 3:
        explain_plots.image_saliency_plot(x, attr, path, title)
    elif kind == "audio":
        explain_plots.audio_saliency_plot(x, attr, path, title, sample_rate=sample_rate)
    else:
        explain_plots.vector_saliency_plot(attr, path, title)


def write_example(out_dir: str, i: int, result: Mapping[str, Any], batch: Mapping[str, Any],
                  class_names: Sequence[str], kinds: Mapping[str, str], *, value: str, steps: int,
                  plots: bool = True, sample_rates: Optional[Mapping[str, int]] = None) -> Dict[str, Any]:
    """Writes example ``i`` of ``result`` (from :func:`compute`) to out_dir/example_<i>/; returns its summary."""
    d = os.path.join(out_dir, f"example_{i}")
    logits = result["logits"][i]
    target = int(result["target"][i])
    z = np.exp(logits - logits.max())
    probs = z / z.sum()
    name = lambda c: str(class_names[c]) if c < len(class_names) else str(c)  # noqa: E731
    shap = dict(result["shapley"][i], target=name(target))
    summary: Dict[str, Any] = {
        "predicted": name(int(np.argmax(logits))), "explained_class": name(target), "value": value,
        "probabilities": {name(c): float(p) for c, p in enumerate(probs)},
        "contributions": shap, "saliency": {}, "attention": {}}
    _write_json(os.path.join(d, "contributions.json"), shap)
    if plots:
        from experiments.reports import explain_plots

        explain_plots.contributions_plot(shap["values"], os.path.join(d, "contributions.png"),
                                         f"modality contributions to {value} of {name(target)!r}",
                                         shap["empty"], shap["full"])
    for m, ig in result["saliency"].items():
        attr, x = ig.attributions[i], np.asarray(batch["inputs"][m][i])
        delta = float(ig.f_input[i] - ig.f_baseline[i])
        summary["saliency"][m] = {"file": f"saliency_{m}.npy", "steps": steps, "f_input": float(ig.f_input[i]),
                                  "f_baseline": float(ig.f_baseline[i]), "sum": float(attr.sum()),
                                  "gap": float(ig.gap[i]), "relative_gap": abs(float(ig.gap[i])) / max(abs(delta), 1e-12)}
        _write_npy(os.path.join(d, f"saliency_{m}.npy"), attr)
        if plots:
            _saliency_plot(kinds.get(m, ""), x, attr, os.path.join(d, f"saliency_{m}.png"),
                           f"{m}: integrated gradients of {value} of {name(target)!r}", (sample_rates or {}).get(m, 0))
    weights = {}
    for k, (path, w) in enumerate(sorted(result["attention"].items())):
        weights[path] = w[i]
        summary["attention"][path] = {"shape": list(w[i].shape), "png": f"attention_{k}.png"}
        if plots:
            from experiments.reports import explain_plots

            explain_plots.attention_plot(w[i], os.path.join(d, f"attention_{k}.png"), f"{path} (mean over heads)")
    if weights:
        _write_json(os.path.join(d, "attention.json"), weights)
    _write_json(os.path.join(d, "explanation.json"), summary)
    return summary


def explain_all(logits_fn, model, variables, batch, out_dir: str, modalities: Sequence[str],
                kinds: Mapping[str, str], class_names: Sequence[str], *, target: Optional[int] = None,
                value: str = "probability", steps: int = DEFAULT_STEPS, plots: bool = True,
                sample_rates: Optional[Mapping[str, int]] = None) -> List[Dict[str, Any]]:
    """:func:`compute` then :func:`write_example` for every example of ``batch``."""
    if steps < 1:
        raise UserError(f"--ig_steps must be >= 1, got {steps}")
    result = compute(logits_fn, model, variables, batch, modalities, kinds, target=target, value=value, steps=steps)
    return [write_example(out_dir, i, result, batch, class_names, kinds, value=value, steps=steps, plots=plots,
                          sample_rates=sample_rates) for i in range(len(result["logits"]))]


def model_modalities(model, batch: Mapping[str, Any]) -> List[str]:
    """The batch's inputs the classifier reads (its encoders' modalities; all of them in early placement)."""
    names = sorted(batch["inputs"])
    if getattr(model, "placement", "middle") == "early":
        return names
    return [m for m in names if m in dict(getattr(model, "encoders", {}) or {})] or names


def explain_eval_examples(config, info: Mapping[str, Any], model, variables, batches: Sequence[Mapping[str, Any]],
                          count: int, out_dir: str, class_names: Optional[Sequence[str]], *,
                          plots: bool = True) -> List[Dict[str, Any]]:
    """``eval --explain N``: the first ``count`` examples of the eval ``batches`` (normalised, as
    ``analysis.collect`` returns them) explained into out_dir/example_<i>/."""
    from mmjax.inference.inputs import InputError, specs_from_record

    rows = []
    for b in batches:
        size = len(np.asarray(b["label"]))
        keep = size if b.get("weight") is None else int(np.sum(np.asarray(b["weight"]) > 0))
        rows.append({k: {m: np.asarray(v)[:keep] for m, v in b[k].items()}
                     for k in ("inputs", "token_mask", "modality_mask") if b.get(k)})
        if sum(len(next(iter(r["inputs"].values()))) for r in rows) >= count:
            break
    batch = {k: {m: np.concatenate([r[k][m] for r in rows])[:count] for m in rows[0][k]} for k in rows[0]}
    names = model_modalities(model, batch)
    try:
        specs = specs_from_record(config, info, names)
    except InputError:
        specs = {}
    kinds = {m: s.kind for m, s in specs.items()}
    logits_fn = lambda b: model.apply(variables, b, train=False)  # noqa: E731
    return explain_all(logits_fn, model, variables, batch, out_dir, names, kinds,
                       list(class_names or []) or [str(c) for c in range(int(info["num_classes"]))],
                       plots=plots, sample_rates={m: s.sample_rate for m, s in specs.items()})


def run(args) -> int:
    import mmjax

    loaded = mmjax.load(args.workdir, which="latest" if args.latest else "best")
    kinds = {m: s.kind for m, s in loaded.specs.items()}
    batch = loaded.preprocess(parse_inputs(args.inputs, kinds))
    out = args.out or os.path.join(str(args.workdir), "explain")
    target = class_index(args.class_name, loaded.class_names)
    summaries = explain_all(lambda b: loaded.forward(loaded.variables, b), loaded.model, loaded.variables, batch, out,
                            loaded.modalities, kinds, loaded.class_names, target=target, value=args.value,
                            steps=args.ig_steps, sample_rates={m: s.sample_rate for m, s in loaded.specs.items()})
    for note in loaded.last_notes:
        print(f"note: {note}")
    for i, s in enumerate(summaries):
        parts = ", ".join(f"{m} {v:+.3f}" for m, v in s["contributions"]["values"].items())
        print(f"example {i}: predicted {s['predicted']!r}; contributions to {args.value} of {s['explained_class']!r}: "
              f"{parts}")
    print(f"wrote {out}/example_*/")
    return 0
