"""The training config written next to a manifest by ``data build --from``: a complete experiment file.

It holds the data config that reads the built dataset (every key spelled out, so
it can be edited), one small encoder per modality chosen by kind (image ``cnn``,
audio ``audio_cnn`` at the dataset's sample rate, text ``gru`` over UTF-8 bytes,
vector ``mlp``), ``concat`` fusion (no fusion block with a single modality) and a
step budget of about 30 epochs. ``python -m experiments train FILE --workdir W``
runs it; ``--config.KEY=VALUE`` overrides any key as for the built-in experiments.
"""
from __future__ import annotations

import math
import os
from typing import Any, Dict

from experiments.configs.stamps import FUSION_CONFIGS  # small encoders pooled by mean, as here
from mmjax.models import fusion_choice
from mmjax.train import files

TEMPLATE = '''"""{name}: {description}

Written by `python -m experiments data build --from {manifest} --name {name}`.
Classes ({num_classes}, ids in sorted order): {classes}
Splits: {splits}
Train:  python -m experiments train {path} --workdir runs/{name}
Edit freely; rebuilding with --overwrite writes this file again.
"""
import ml_collections

from experiments.configs import base

DATA = {data}

ENCODERS = {encoders}

# Per-fusion options: --config.model.fusion=X uses FUSION_CONFIGS[X] (as `sweep` does).
FUSION_CONFIGS = {fusion_configs}


def get_config() -> ml_collections.ConfigDict:
    c = base.get_config()
    c.description = {description!r}
    c.modalities = ()  # () = all; e.g. ({first!r},) for a unimodal baseline
    c.total_steps = {total_steps}  # about 30 epochs of {train} train examples
    c.batch_size = {batch_size}
    c.log_every = {log_every}
    c.eval_every = 0  # 0: evaluate at the end only
    c.eval_split = {eval_split!r}
    c.checkpoint_every = 0
    c.data = ml_collections.ConfigDict(DATA)
    c.model.encoders = ml_collections.ConfigDict(ENCODERS)
    c.fusion_configs = ml_collections.ConfigDict(FUSION_CONFIGS)
    c.model.fusion = {fusion!r}
    c.model.fusion_config = ml_collections.ConfigDict({fusion_config!r})
    c.model.head_hidden = (64,)
    c.model.dropout_rate = 0.1
    c.optim.learning_rate = 2e-3
    c.optim.warmup_steps = {warmup}
    return c
'''


def encoder(kind: str, sample_rate: int) -> Dict[str, Any]:
    """A small encoder config for a modality of ``kind``; audio frames of about 32 ms at ``sample_rate``."""
    if kind == "image":
        return {"name": "cnn", "features": (16, 32, 64), "convs_per_stage": 1, "out_dim": 64}
    if kind == "audio":
        n_fft = 2 ** int(round(math.log2(max(64, 0.032 * sample_rate))))
        return {"name": "audio_cnn", "sample_rate": sample_rate, "n_fft": n_fft, "hop_length": n_fft // 2,
                "n_mels": 40, "features": (16, 32), "convs_per_stage": 1, "out_dim": 64}
    if kind == "text":
        return {"name": "gru", "vocab_size": 260, "embed_dim": 32, "hidden_dim": 64, "bidirectional": True,
                "pool": "mean"}
    return {"name": "mlp", "features": (128, 64)}


def literal(value: Any, indent: int = 0) -> str:
    """A Python literal of ``value`` (dicts one key per line, in their order; tuples, lists, scalars by repr)."""
    if isinstance(value, dict) and value:
        pad = " " * (indent + 4)
        items = "".join(f"{pad}{k!r}: {literal(v, indent + 4)},\n" for k, v in value.items())
        return "{\n" + items + " " * indent + "}"
    return repr(value)


def render(name: str, plan, data_cfg, path: str, batch_size: int = 32) -> str:
    """The config file's text for the dataset ``name`` built from ``plan`` (a manifest_gen.Plan)."""
    mods = {m.name: m for m in plan.modalities}
    train = len(plan.splits["train"])
    batch = batch_size if train >= batch_size else 2 ** int(math.log2(train))  # a power of 2 splits over devices
    total = int(min(3000, max(100, math.ceil(30 * train / batch))))
    eval_split = next((s for s in ("validation", "test") if s in plan.splits), "train")
    encoders = {m: encoder(mods[m].kind, plan.sample_rate) for m in sorted(mods)}
    model = {"encoders": encoders, "fusion": "concat", "fusion_config": {"out_dim": 64}}
    if len(mods) == 1:  # one modality: encoder -> head, no fusion block (as experiments.modalities asks for it)
        model = fusion_choice.unimodal(model, sorted(mods)[0])
    kinds = ", ".join(f"{m} ({mods[m].kind}, {encoders[m]['name']})" for m in sorted(mods))
    names = plan.class_names
    return TEMPLATE.format(
        name=name, manifest=plan.manifest, path=path, description=f"{kinds}; {len(names)} classes",
        num_classes=len(names), classes=", ".join(names[:30]) + (" ..." if len(names) > 30 else ""),
        splits=", ".join(f"{s} {len(r)}" for s, r in plan.splits.items()) + f" ({plan.split_rule})",
        data=literal(data_cfg.to_dict()), encoders=literal(encoders),
        fusion_configs=literal(FUSION_CONFIGS), first=sorted(mods)[0], total_steps=total, train=train,
        batch_size=batch, log_every=max(1, min(50, total // 10)), eval_split=eval_split,
        fusion=model["fusion"], fusion_config=model["fusion_config"],
        warmup=min(50, total // 10))


def write(name: str, plan, data_cfg, path: str) -> str:
    """Writes :func:`render`'s text to ``path`` -> the path."""
    text = render(name, plan, data_cfg, path)
    compile(text, path, "exec")  # a template bug must not leave a broken file
    files.write_text(path, text)  # whole or not at all (temporary file + rename)
    return os.path.abspath(path)
