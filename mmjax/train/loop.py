"""The training loop: ``train_and_evaluate(config, workdir)`` and ``evaluate(config, workdir)``.

Config keys read here (see ``experiments/configs/base.py`` for defaults):
``seed, total_steps, batch_size, log_every, eval_every, checkpoint_every,
eval_steps, eval_split, data, model, loss, optim, train, parallel, checkpoint,
init_from, tensorboard``.

A workdir that already holds checkpoints is resumed from its latest one: the
state (params, optimizer, step, RNG) is restored and the data pipeline
restarts at the saved step, so an interrupted run continues exactly where it
stopped (on CPU it reproduces the uninterrupted run's losses bit for bit).
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, TextIO

import jax
import numpy as np

from mmjax import metrics as metrics_lib
from mmjax.models.classifier import build_classifier
from mmjax.train import logging as log_lib
from mmjax.train.checkpoint import Checkpointer, CheckpointError, load_params
from mmjax.train.optim import make_optimizer
from mmjax.train.parallel import Runner
from mmjax.train.tasks import get_task

DataFn = Callable[..., Iterator[Dict[str, Any]]]


class TrainingDiverged(RuntimeError):
    """The loss or gradient norm became NaN/Inf with ``train.nan_policy = "stop"``."""


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    if cfg is None:
        return default
    try:
        value = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
    except (AttributeError, KeyError):
        return default
    return default if value is None else value


def _as_dict(x: Any) -> Dict[str, Any]:
    if x is None:
        return {}
    return x.to_dict() if hasattr(x, "to_dict") else dict(x)


def parallel_mode(config: Any) -> str:
    """config.parallel.mode, where "auto" is "single" on one device and "sharded" otherwise."""
    mode = _get(config.parallel, "mode", "auto")
    if mode == "auto":
        return "single" if jax.device_count() == 1 else "sharded"
    return mode


def build(config: Any, num_classes: int, info: Optional[Mapping[str, Any]] = None) -> Runner:
    """Model, optimizer and the parallel runner from ``config`` (``config.task`` picks the
    model family, see :mod:`mmjax.train.tasks`; the runner keeps it as ``runner.task``)."""
    task = get_task(config, info or {"num_classes": num_classes})
    if task.name != "classification":
        train_cfg = _as_dict(_get(config, "train", {}))
        runner = Runner(
            parallel_mode(config), task.build_model(),
            lambda p: make_optimizer(_as_dict(config.optim), p, int(config.total_steps)),
            step_kwargs={"grad_accum_steps": int(train_cfg.get("grad_accum_steps", 1)),
                         "nan_policy": train_cfg.get("nan_policy", "skip"), "task": task},
            mesh_cfg=_as_dict(_get(config.parallel, "mesh", {"data": -1})),
            rules=_get(config.parallel, "rules", None),
        )
        runner.task = task.attach(runner)
        return runner
    model = build_classifier(_as_dict(config.model), num_classes)
    total = int(config.total_steps)
    optim_cfg = _as_dict(config.optim)
    loss_cfg = _as_dict(_get(config, "loss", {}))
    loss_kwargs = {
        "loss": loss_cfg.get("name", "softmax_xent"),
        "label_smoothing": float(loss_cfg.get("label_smoothing", 0.0)),
        "class_weights": tuple(loss_cfg["class_weights"]) if loss_cfg.get("class_weights") else None,
    }
    train_cfg = _as_dict(_get(config, "train", {}))
    step_kwargs = dict(loss_kwargs, grad_accum_steps=int(train_cfg.get("grad_accum_steps", 1)),
                       nan_policy=train_cfg.get("nan_policy", "skip"))
    eval_kwargs = dict(loss_kwargs, num_classes=num_classes)
    return Runner(
        parallel_mode(config), model, lambda p: make_optimizer(optim_cfg, p, total),
        step_kwargs=step_kwargs, eval_kwargs=eval_kwargs,
        mesh_cfg=_as_dict(_get(config.parallel, "mesh", {"data": -1})),
        rules=_get(config.parallel, "rules", None),
    )


def _peek(it: Iterator) -> tuple:
    first = next(it)

    def chained():
        yield first
        yield from it
    return first, chained()


def apply_init_from(runner: Runner, state, spec: Mapping[str, Any]):
    """Copies a params subtree from a checkpoint (or a given pytree) into ``state``.

    ``spec``: ``path`` (a workdir / checkpoint dir) or ``params`` (a pytree),
    ``source`` (path inside the loaded params, "" = all) and ``target`` (path
    in the model's params, default = source), both "a/b/c".
    """
    loaded = spec.get("params")
    if loaded is None:
        loaded = load_params(spec["path"], spec.get("step"))
    source = [p for p in str(spec.get("source", "")).split("/") if p]
    target = [p for p in str(spec.get("target") or spec.get("source") or "").split("/") if p]
    for p in source:
        if not isinstance(loaded, Mapping) or p not in loaded:
            raise CheckpointError(f"init_from.source: no {p!r} in the loaded params (has {sorted(loaded)})")
        loaded = loaded[p]
    host = runner.host_state(state)
    params = jax.tree.map(lambda x: x, host.params)  # a copy we may edit in place
    node = params
    for p in target[:-1]:
        node = node[p]
    current = node[target[-1]] if target else params
    if jax.tree.structure(current) != jax.tree.structure(jax.tree.map(lambda x: x, loaded)):
        raise CheckpointError(f"init_from: the structure of {spec.get('source')!r} does not match "
                              f"model params at {'/'.join(target)!r}")

    def place(old, new):
        new = np.asarray(new)
        if new.shape != old.shape:
            raise CheckpointError(f"init_from: shape {new.shape} does not match model param {old.shape}")
        return jax.device_put(new.astype(old.dtype), old.sharding)
    replaced = jax.tree.map(place, current, loaded)
    if target:
        node[target[-1]] = replaced
    else:
        params = replaced
    return runner.place_restored(host.replace(params=params))


def run_eval(runner: Runner, state, batches: Iterator[Dict[str, Any]], num_classes: int,
             max_batches: Optional[int] = None) -> Dict[str, Any]:
    """Sums eval_step over ``batches`` -> loss, accuracy, macro-F1, per-class P/R/F1, confusion."""
    total: Dict[str, np.ndarray] = {}
    for i, batch in enumerate(batches):
        if max_batches and i >= max_batches:
            break
        sums = runner.eval_sums(runner.eval_step(state, runner.put_batch(batch)))
        for k, v in sums.items():
            total[k] = total.get(k, 0) + v
    if not total:
        raise ValueError("evaluation got no batches (check eval_split / eval_steps)")
    if "confusion" in total:
        return metrics_lib.summarize(total["confusion"], float(total["loss_sum"]), float(total["weight_sum"]))
    return {"loss": float(total["loss_sum"] / max(total["weight_sum"], 1e-12)),
            "num_examples": float(total["weight_sum"])}


def evaluate_split(runner: Runner, state, config: Any, data_fn: DataFn, num_classes: int,
                   out_dir: Optional[str] = None) -> Dict[str, Any]:
    """The eval metrics of ``state`` on ``config.eval_split``: the task's own evaluation,
    or :func:`run_eval` for classification."""
    seed, batch_size = int(_get(config, "seed", 0)), int(config.batch_size)

    def batches(split):
        return data_fn(config, split, global_batch_size=batch_size, seed=seed, train=False, start_step=0)
    task = getattr(runner, "task", None)
    if task is not None and task.name != "classification":
        return task.evaluate(runner, state, batches, out_dir)
    eval_steps = _get(config, "eval_steps", None)
    return run_eval(runner, state, batches(_get(config, "eval_split", "test")), num_classes,
                    int(eval_steps) if eval_steps else None)


def _scalars(m: Mapping[str, Any]) -> Dict[str, float]:
    return {k: float(v) for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def train_and_evaluate(config: Any, workdir: str, *, data_fn: Optional[DataFn] = None,
                       info_fn: Optional[Callable[[Any], Dict[str, Any]]] = None,
                       console: Optional[TextIO] = sys.stdout, stop_at: Optional[int] = None) -> Dict[str, Any]:
    """Trains ``config`` in ``workdir`` (resuming from its checkpoints) and returns the final eval metrics.

    Args:
      data_fn: ``(config, split, *, global_batch_size, seed, train, start_step)``
        -> iterator of this process's numpy batches (default:
        ``experiments.data_factory.make_data``).
      info_fn: config -> {"num_classes": C, ...} (default: ``data_factory.data_info``).
      stop_at: leave the loop after this step (with a checkpoint), as a
        preempted job would; a later call on the same workdir resumes.

    Writes WORKDIR/metrics.jsonl, WORKDIR/tensorboard/, WORKDIR/checkpoints/ and
    (when training finished) WORKDIR/results.json.
    """
    if data_fn is None or info_fn is None:
        from experiments import data_factory
        data_fn = data_fn or data_factory.make_data
        info_fn = info_fn or data_factory.data_info
    os.makedirs(workdir, exist_ok=True)
    info = info_fn(config)
    num_classes = int(info["num_classes"])
    total_steps = int(config.total_steps)
    batch_size = int(config.batch_size)
    runner = build(config, num_classes, info)
    ck_cfg = _as_dict(_get(config, "checkpoint", {}))
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=int(ck_cfg.get("keep", 2)),
                        best_metric=ck_cfg.get("best_metric") or None, best_mode=ck_cfg.get("best_mode", "max"),
                        async_save=bool(ck_cfg.get("async_save", False)))
    is_main = jax.process_index() == 0
    writer = log_lib.MetricWriter(workdir, enabled=is_main, tensorboard=bool(_get(config, "tensorboard", True)),
                                  console=console)
    say = writer._print
    rng = jax.random.PRNGKey(int(_get(config, "seed", 0)))
    seed = int(_get(config, "seed", 0))
    latest = ckpt.latest_step()
    start = int(latest or 0)
    train_iter = data_fn(config, "train", global_batch_size=batch_size, seed=seed, train=True, start_step=start)
    example, train_iter = _peek(iter(train_iter))
    if latest is not None:
        state = runner.place_restored(ckpt.restore(runner.abstract_state(example, rng), latest))
        say(f"resumed from {ckpt.directory} at step {start}")
    else:
        state = runner.create_state(example, rng)
        init_from = _as_dict(_get(config, "init_from", {}))
        if init_from.get("path") or init_from.get("params") is not None:
            state = apply_init_from(runner, state, init_from)
            say(f"initialised {init_from.get('target') or init_from.get('source') or 'all params'} "
                f"from {init_from.get('path', 'a pytree')}")
    log_every = int(_get(config, "log_every", 50))
    eval_every = int(_get(config, "eval_every", 0))
    ckpt_every = int(_get(config, "checkpoint_every", 0))
    eval_steps = _get(config, "eval_steps", None)
    eval_split = _get(config, "eval_split", "test")
    nan_stop = _as_dict(_get(config, "train", {})).get("nan_policy", "skip") == "stop"
    cfg_dict = _as_dict(config)
    progress = log_lib.Progress(total_steps, batch_size, start)
    last = stop_at if stop_at is not None else total_steps
    last = min(last, total_steps)

    def do_eval(step):
        ev = evaluate_split(runner, state, config, data_fn, num_classes)
        classification = getattr(runner, "task", None) is None
        writer.write(step, {k: v for k, v in ev.items()
                            if k in ("loss", "accuracy", "macro_f1", "per_class") or not classification and
                            k in _scalars(ev)}, prefix="eval/")
        say(f"eval @ {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in _scalars(ev).items()))
        return ev

    skipped = 0
    step = start
    eval_metrics: Optional[Dict[str, Any]] = None
    try:
        while step < last:
            batch = next(train_iter)
            state, m = runner.train_step(state, runner.put_batch(batch))
            step += 1
            if nan_stop or step % log_every == 0 or step == last:
                host = runner.train_metrics(m)
                if host["finite"] < 1:
                    if nan_stop:
                        raise TrainingDiverged(
                            f"loss or gradient norm is not finite at step {step} (loss={host['loss']}, "
                            f"grad_norm={host['grad_norm']}); the last good checkpoint is step "
                            f"{ckpt.latest_step()} in {ckpt.directory}"
                        )
                    skipped += 1
                if step % log_every == 0 or step == last:
                    speed = progress.update(step)
                    record = {k: v for k, v in host.items() if k not in ("finite", "weight")}
                    record.update(speed)
                    record["skipped_nonfinite"] = skipped
                    writer.write(step, record)
                    say(log_lib.format_line(step, total_steps, host, speed))
            evaluated = bool(eval_every and step % eval_every == 0) or step == total_steps
            t0 = time.perf_counter()
            if evaluated:
                eval_metrics = do_eval(step)
            if (ckpt_every and step % ckpt_every == 0) or step == last:
                ckpt.save(step, runner.host_state(state), config=cfg_dict,
                          metrics=_scalars(eval_metrics) if evaluated and eval_metrics else None,
                          force=True)
            progress.exclude(time.perf_counter() - t0)
        ckpt.wait()
        if step >= total_steps:
            if eval_metrics is None:
                eval_metrics = do_eval(step)
            results = {"step": step, "eval_split": eval_split, **eval_metrics}
            if is_main:
                with open(os.path.join(workdir, "results.json"), "w", encoding="utf-8") as f:
                    json.dump(log_lib._json_value(results), f, indent=2)
            return results
        return {"step": step, "stopped_at": step}
    finally:
        ckpt.close()
        writer.close()


def evaluate(config: Any, workdir: str, *, which: str = "best", data_fn: Optional[DataFn] = None,
             info_fn: Optional[Callable[[Any], Dict[str, Any]]] = None,
             console: Optional[TextIO] = sys.stdout) -> Dict[str, Any]:
    """Restores the best (or latest) checkpoint of ``workdir``, evaluates it, writes WORKDIR/eval/metrics.json."""
    if data_fn is None or info_fn is None:
        from experiments import data_factory
        data_fn = data_fn or data_factory.make_data
        info_fn = info_fn or data_factory.data_info
    if which not in ("best", "latest"):
        raise ValueError(f"which must be 'best' or 'latest', got {which!r}")
    info = info_fn(config)
    num_classes = int(info["num_classes"])
    runner = build(config, num_classes, info)
    ck_cfg = _as_dict(_get(config, "checkpoint", {}))
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=int(ck_cfg.get("keep", 2)),
                        best_metric=ck_cfg.get("best_metric") or None, best_mode=ck_cfg.get("best_mode", "max"))
    try:
        step = ckpt.best_step() if which == "best" else ckpt.latest_step()
        if step is None:
            raise CheckpointError(f"no checkpoint in {ckpt.directory}: train first")
        seed = int(_get(config, "seed", 0))
        batch_size = int(config.batch_size)
        split = _get(config, "eval_split", "test")
        it = data_fn(config, split, global_batch_size=batch_size, seed=seed, train=False, start_step=0)
        example, it = _peek(iter(it))
        state = runner.place_restored(ckpt.restore(runner.abstract_state(example, jax.random.PRNGKey(seed)), step))
        ev = evaluate_split(runner, state, config, data_fn, num_classes, os.path.join(workdir, "eval"))
    finally:
        ckpt.close()
    out = {"step": int(step), "checkpoint": which, "eval_split": split, **ev}
    if jax.process_index() == 0:
        os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
        with open(os.path.join(workdir, "eval", "metrics.json"), "w", encoding="utf-8") as f:
            json.dump(log_lib._json_value(out), f, indent=2)
        if console is not None:
            print(f"eval of step {step} ({which}): " + ", ".join(f"{k} {v:.4f}" for k, v in _scalars(ev).items()),
                  file=console)
    return out
