"""The optimizer from config: schedule, AdamW with a decay mask, clipping, freezing.

Config keys (``config.optim``; defaults, base.py's values, in :mod:`mmjax.train.defaults`):
  name: "adamw" | "sgd".
  learning_rate: peak learning rate.
  schedule: "cosine" (linear warmup, then cosine to ``end_lr_factor * lr``) | "constant" (with warmup).
  warmup_steps, end_lr_factor, weight_decay, b1, b2, momentum (sgd).
  clip_norm: global-norm clipping threshold (0 or None = off).
  freeze: list of parameter path prefixes ("encoder_text", "head/out") whose
    weights get no update (optax.set_to_zero through multi_transform).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import jax
import optax

from mmjax import errors
from mmjax.train.config_access import setting

PyTree = Any


class OptimConfigError(errors.ConfigError):
    """Bad ``config.optim`` value."""


def path_str(path: Tuple[Any, ...]) -> str:
    """jax key path -> "a/b/c"."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def matches_prefix(path: str, prefix: str) -> bool:
    """True when ``prefix`` covers ``path`` at a component boundary.

    "encoder_text" covers "encoder_text_0/dense_0/kernel" (the classifier names
    a modality's encoders ``encoder_<modality>_<k>``) and "head/out" covers
    "head/out/kernel", but "head/o" does not.
    """
    prefix = prefix.strip("/")
    return path == prefix or path.startswith(prefix + "/") or path.startswith(prefix + "_")


def decay_mask(params: PyTree) -> PyTree:
    """True for weights that get weight decay: matrices and embeddings, not biases or norm scales."""
    def keep(path, x):
        name = path_str(path).rsplit("/", 1)[-1]
        return x.ndim >= 2 and name not in ("bias", "scale")
    return jax.tree_util.tree_map_with_path(keep, params)


def freeze_labels(params: PyTree, freeze: Sequence[str]) -> PyTree:
    """"frozen" / "trainable" label per leaf for optax.multi_transform; checks every prefix matches something."""
    freeze = [f for f in (freeze or ()) if f]
    paths = [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    for prefix in freeze:
        if not any(matches_prefix(p, prefix) for p in paths):
            tops = sorted({p.split("/")[0] for p in paths})
            raise OptimConfigError(
                f"optim.freeze: prefix {prefix!r} matches no parameter; top-level modules are {tops}"
            )
    return jax.tree_util.tree_map_with_path(
        lambda p, _: "frozen" if any(matches_prefix(path_str(p), f) for f in freeze) else "trainable", params
    )


def options(cfg: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """``config.optim`` with every key the optimizer reads; a missing one (or None) takes its
    default from :mod:`mmjax.train.defaults`, the values base.py's experiments have.

    ``clip_norm`` is the exception: an explicit None turns clipping off, as 0 does.
    """
    cfg = cfg or {}
    run = {"optim": cfg}
    return {
        "name": setting(run, "optim.name"),
        "learning_rate": setting(run, "optim.learning_rate"),
        "schedule": setting(run, "optim.schedule"),
        "warmup_steps": setting(run, "optim.warmup_steps"),
        "end_lr_factor": setting(run, "optim.end_lr_factor"),
        "weight_decay": setting(run, "optim.weight_decay"),
        "b1": setting(run, "optim.b1"),
        "b2": setting(run, "optim.b2"),
        "momentum": setting(run, "optim.momentum"),
        "clip_norm": (cfg["clip_norm"] or 0.0) if "clip_norm" in cfg else setting(run, "optim.clip_norm"),
        "freeze": tuple(setting(run, "optim.freeze") or ()),
    }


def check_ranges(cfg: Optional[Mapping[str, Any]]) -> None:
    """Raises OptimConfigError naming the ``optim.*`` key whose value (given, or its default) is out of range.

    A negative learning rate would silently ascend the loss, b1 / b2 >= 1 never
    forget, and a negative weight decay grows the weights: none fails loudly on
    its own.
    """
    o = options(cfg)

    def check(key, ok, want):
        if not ok(float(o[key])):
            raise OptimConfigError(f"optim.{key} must be {want}, got {o[key]!r}")

    check("learning_rate", lambda v: v > 0, "> 0")
    check("warmup_steps", lambda v: v >= 0, ">= 0")
    check("weight_decay", lambda v: v >= 0, ">= 0")
    check("end_lr_factor", lambda v: v >= 0, ">= 0")
    check("b1", lambda v: 0 <= v < 1, "in [0, 1)")
    check("b2", lambda v: 0 <= v < 1, "in [0, 1)")
    check("momentum", lambda v: 0 <= v < 1, "in [0, 1)")
    if o["clip_norm"]:
        check("clip_norm", lambda v: v > 0, "> 0 (or 0 / None: no clipping)")


def make_schedule(cfg: Optional[Mapping[str, Any]], total_steps: int) -> Callable[[int], Any]:
    """step -> learning rate, from ``config.optim`` (:func:`options`)."""
    check_ranges(cfg)
    o = options(cfg)
    lr, warmup, kind = float(o["learning_rate"]), int(o["warmup_steps"]), o["schedule"]
    if kind == "cosine":
        decay_steps = max(int(total_steps), warmup + 1)
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0 if warmup else lr,
            peak_value=lr,
            warmup_steps=warmup,
            decay_steps=decay_steps,
            end_value=lr * float(o["end_lr_factor"]),
        )
    if kind == "constant":
        if not warmup:
            return optax.constant_schedule(lr)
        return optax.join_schedules(
            [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup]
        )
    raise OptimConfigError(f"optim.schedule must be 'cosine' or 'constant', got {kind!r}")


def make_optimizer(cfg: Optional[Mapping[str, Any]], params: PyTree, total_steps: int) -> optax.GradientTransformation:
    """The optax chain: clip -> optimizer (with decay mask) -> freeze, from ``config.optim`` (:func:`options`).

    ``params`` (arrays or ShapeDtypeStructs) is only used to build the decay
    and freeze label trees, so the same transformation works for any sharding.
    """
    schedule = make_schedule(cfg, total_steps)
    o = options(cfg)
    if o["name"] == "adamw":
        opt = optax.adamw(schedule, b1=float(o["b1"]), b2=float(o["b2"]),
                          weight_decay=float(o["weight_decay"]), mask=decay_mask(params))
    elif o["name"] == "sgd":
        opt = optax.sgd(schedule, momentum=float(o["momentum"]) or None)
    else:
        raise OptimConfigError(f"optim.name must be 'adamw' or 'sgd', got {o['name']!r}")
    chain = []
    if o["clip_norm"]:
        chain.append(optax.clip_by_global_norm(float(o["clip_norm"])))
    chain.append(opt)
    tx = optax.chain(*chain)
    if o["freeze"]:
        tx = optax.multi_transform(
            {"trainable": tx, "frozen": optax.set_to_zero()}, freeze_labels(params, o["freeze"])
        )
    return tx
