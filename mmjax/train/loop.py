"""The training loop: ``train_and_evaluate(config, workdir)`` and ``evaluate(config, workdir)``.

Config keys read here (see ``experiments/configs/base.py`` for defaults):
``seed, total_steps, batch_size, log_every, eval_every, checkpoint_every,
eval_steps, eval_split, train_split, data, model, loss, optim, train, parallel, checkpoint,
init_from, tensorboard``.

A workdir that already holds checkpoints is resumed from its latest one: the
state (params, optimizer, step, RNG) is restored and the data pipeline
restarts at the saved step, so an interrupted run continues exactly where it
stopped (on CPU it reproduces the uninterrupted run's losses bit for bit).

``workdir`` may be local or an object-store URL (``gs://bucket/run``): every
file of the run goes through :mod:`mmjax.train.files` (``etils.epath``).
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, TextIO, Tuple

import jax
import numpy as np

from mmjax import metrics as metrics_lib
from mmjax import validation
from mmjax.validation import BatchValidationError
from mmjax.fusion.attention import AttentionConfigError
from mmjax.models.classifier import ModelConfigError, build_classifier
from mmjax.train import files
from mmjax.train import health
from mmjax.train import logging as log_lib
from mmjax.train.config_access import as_dict as _as_dict, get as _get
from mmjax.train.checkpoint import Checkpointer, CheckpointError, load_params
from mmjax.train.optim import OptimConfigError, make_optimizer
from mmjax.train.parallel import Runner, prefetch_to_device
from mmjax.train.tasks import get_task

DataFn = Callable[..., Iterator[Dict[str, Any]]]
DEVICE_PREFETCH = 2  # batches on their way to the device while a step runs
# checkpoint.async_save for configs that do not set it; experiments/configs/base.py sets the same.
ASYNC_SAVE = True


class TrainingDiverged(RuntimeError):
    """The loss or gradient norm became NaN/Inf with ``train.nan_policy = "stop"``."""


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
            input_norm=(info or {}).get("image_norms"),
            dcn_cfg=_as_dict(_get(config.parallel, "dcn_mesh", {})),
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
        input_norm=(info or {}).get("image_norms"),
        dcn_cfg=_as_dict(_get(config.parallel, "dcn_mesh", {})),
    )


def _peek(it: Iterator) -> tuple:
    first = next(it)

    def chained():
        yield first
        yield from it
    return first, chained()


def open_checkpoints(config: Any, workdir: str, *, for_eval: bool = False) -> Checkpointer:
    """The run's :class:`Checkpointer` (``WORKDIR/checkpoints``, options from ``config.checkpoint``).

    ``for_eval``: the directory must already hold checkpoints; a wrong workdir is an
    error and nothing is created there.
    """
    ck_cfg = _as_dict(_get(config, "checkpoint", {}))
    directory = files.path(workdir) / "checkpoints"
    if for_eval and not directory.is_dir():
        raise CheckpointError(f"no checkpoints in {files.display(workdir)} (no {directory}): train first")
    return Checkpointer(os.fspath(directory), keep=int(ck_cfg.get("keep", 2)),
                        best_metric=ck_cfg.get("best_metric") or None, best_mode=ck_cfg.get("best_mode", "max"),
                        async_save=bool(ck_cfg.get("async_save", ASYNC_SAVE)) and not for_eval)


def _graft(tree: Any, target: Sequence[str], loaded: Any, what: str) -> Any:
    """A copy of ``tree`` with the subtree at path ``target`` replaced by ``loaded`` (same structure/shapes)."""
    tree = jax.tree.map(lambda x: x, tree)  # a copy we may edit in place
    node = tree
    for p in target[:-1]:
        if not isinstance(node, Mapping) or p not in node:
            raise CheckpointError(f"init_from.target: no {p!r} in the model's {what} (has {sorted(node)})")
        node = node[p]
    if target and (not isinstance(node, Mapping) or target[-1] not in node):
        raise CheckpointError(f"init_from.target: no {target[-1]!r} in the model's {what} (has {sorted(node)})")
    current = node[target[-1]] if target else tree
    if jax.tree.structure(current) != jax.tree.structure(jax.tree.map(lambda x: x, loaded)):
        raise CheckpointError(f"init_from: the loaded {what} do not match the model's {what} at "
                              f"{'/'.join(target) or '(root)'!r}")

    def place(old, new):
        new = np.asarray(new)
        if new.shape != old.shape:
            raise CheckpointError(f"init_from: shape {new.shape} does not match model {what} {old.shape}")
        return jax.device_put(new.astype(old.dtype), old.sharding)

    replaced = jax.tree.map(place, current, loaded)
    if not target:
        return replaced
    node[target[-1]] = replaced
    return tree


def _tower_mapping(loaded: Mapping[str, Any], params: Mapping[str, Any]) -> List[Tuple[str, str]]:
    """Contrastive tower encoders ``encoders_<m>`` -> classifier encoders ``encoder_<m>_0``."""
    return [(k, f"encoder_{k[len('encoders_'):]}_0") for k in sorted(loaded)
            if k.startswith("encoders_") and f"encoder_{k[len('encoders_'):]}_0" in params]


def _init_pairs(spec: Mapping[str, Any], loaded: Any, params: Any) -> List[Tuple[str, str]]:
    """(source, target) path pairs: comma-separated lists in ``source``/``target``; with neither
    given, a contrastive checkpoint loaded into a classifier maps its towers automatically."""
    sources = [s.strip() for s in str(spec.get("source") or "").split(",") if s.strip()]
    targets = [s.strip() for s in str(spec.get("target") or "").split(",") if s.strip()]
    if not sources and not targets and isinstance(loaded, Mapping):
        towers = _tower_mapping(loaded, params)
        if towers and set(loaded) != set(params):
            return towers
    if not targets:
        targets = sources
    if not sources:
        sources = [""] * len(targets) if targets else [""]
        targets = targets or [""]
    if len(sources) != len(targets):
        raise CheckpointError(f"init_from: source lists {len(sources)} paths ({sources}) but target lists "
                              f"{len(targets)} ({targets}); give one target per source")
    return list(zip(sources, targets))


def _subtree(loaded: Any, path: str) -> Any:
    for p in [p for p in path.split("/") if p]:
        if not isinstance(loaded, Mapping) or p not in loaded:
            raise CheckpointError(f"init_from.source: no {p!r} in the loaded params (has {sorted(loaded)})")
        loaded = loaded[p]
    return loaded


def apply_init_from(runner: Runner, state, spec: Mapping[str, Any], say: Optional[Callable[[str], None]] = None):
    """Copies params subtrees from a checkpoint, a given pytree or a pretrained encoder into ``state``.

    ``spec``: ``path`` (a workdir / checkpoint dir), ``params`` (a pytree) or
    ``pretrained`` (a name from ``mmjax.encoders.pretrained.pretrained_names()``,
    e.g. "minilm": its offline weights, and BatchNorm statistics where it has
    them); ``source`` (path inside the loaded params, "" = all) and ``target``
    (path in the model's params, default = source), both "a/b/c", or
    comma-separated lists of as many paths each. For a classifier the encoder
    of modality ``m`` lives at ``encoder_<m>_0``; a contrastive checkpoint's
    tower ``encoders_<m>`` goes there by default when neither path is given.
    ``say`` (optional) is told which subtrees were copied from where.
    """
    loaded_stats = None
    if spec.get("pretrained"):
        from mmjax.encoders.pretrained import pretrained_variables

        if not spec.get("target"):
            raise CheckpointError("init_from.pretrained needs init_from.target (e.g. 'encoder_text_0')")
        variables = pretrained_variables(str(spec["pretrained"]))
        loaded, loaded_stats = variables["params"], variables.get("batch_stats")
    else:
        loaded = spec.get("params")
        if loaded is None:
            loaded = load_params(spec["path"], spec.get("step"))
    host = runner.host_state(state)
    params = host.params
    pairs = _init_pairs(spec, loaded, params)
    for source, target in pairs:
        params = _graft(params, [p for p in target.split("/") if p], _subtree(loaded, source), "params")
    host = host.replace(params=params)
    if loaded_stats:
        if not host.batch_stats:
            raise CheckpointError(f"init_from.pretrained {spec['pretrained']!r} has BatchNorm statistics but "
                                  "the model has no batch_stats")
        stats = host.batch_stats
        for source, target in pairs:
            stats = _graft(stats, [p for p in target.split("/") if p], _subtree(loaded_stats, source),
                           "batch_stats")
        host = host.replace(batch_stats=stats)
    if say is not None:
        origin = spec.get("path") or (spec.get("pretrained") and f"pretrained {spec['pretrained']}") or "a pytree"
        what = ", ".join(f"{t or 'all params'} <- {s or '(root)'}" if s != t else (t or "all params")
                         for s, t in pairs)
        say(f"initialised {what} from {origin}")
    return runner.place_restored(host)


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


class WorkdirError(ValueError):
    """The workdir cannot be used (it is a file, or not writable)."""


def check_workdir(workdir: str) -> None:
    """Raises :class:`WorkdirError` unless ``workdir`` is (or can become) a writable directory.

    An object-store URL needs its fsspec backend (gcsfs for ``gs://``) and must not name an object;
    whether it is writable shows at the first write (the lock).
    """
    if files.is_remote(workdir):
        bucket = "/".join(os.fspath(workdir).split("/")[:3])  # gs://bucket
        try:
            root = files.path(workdir)
            found = files.path(bucket).exists()
            is_file = found and root.exists() and not root.is_dir()
        except files.PathError as e:
            raise WorkdirError(f"--workdir {workdir}: {e}") from None
        except OSError as e:
            raise WorkdirError(f"--workdir {workdir}: cannot reach {bucket} ({type(e).__name__}: {e})") from None
        if not found:
            raise WorkdirError(f"--workdir {workdir}: bucket {bucket} does not exist (or these credentials cannot see it)")
        if is_file:
            raise WorkdirError(f"--workdir {workdir} is a file, not a directory")
        return
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise WorkdirError(f"--workdir {workdir} is a file, not a directory")
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        raise WorkdirError(f"--workdir {workdir}: cannot create it ({e.strerror})") from None
    if not os.access(workdir, os.W_OK):
        raise WorkdirError(f"--workdir {workdir} is not writable")


def check_config(config: Any) -> None:
    """Checks that fail fast, before data is read or anything is compiled.

    Encoder and fusion names (with "did you mean" hints), the mesh against the
    device count, and the global batch size against the data-parallel width.
    """
    from mmjax import encoders as encoder_registry
    from mmjax import fusion as fusion_registry
    from mmjax.train.parallel import ParallelConfigError, mesh_shape
    model = _as_dict(config.model)
    for m, spec in dict(model.get("encoders") or {}).items():
        for s in (spec if isinstance(spec, (list, tuple)) else (spec,)):
            if s and isinstance(s, Mapping) and "name" in s:
                encoder_registry.ENCODERS.get(s["name"])
    placement = model.get("placement", "middle")
    from mmjax.models.classifier import NO_FUSION
    if placement == "middle" and model.get("fusion", "concat") != NO_FUSION:
        fusion_registry.FUSION.get(model.get("fusion", "concat"))
    elif placement == "late" and model.get("fusion", "concat") != "concat":
        fusion_registry.FUSION.get(model["fusion"])
    total = int(config.total_steps)
    if total < 1:
        raise ParallelConfigError(f"total_steps must be >= 1, got {total}")
    batch = int(config.batch_size)
    if batch < 1:
        raise ParallelConfigError(f"batch_size must be >= 1, got {batch}")
    mode = parallel_mode(config)
    n = jax.device_count()
    if mode == "sharded":
        sizes = dict(zip(("data", "fsdp", "tensor"), mesh_shape(_as_dict(_get(config.parallel, "mesh", {})), n)))
        width = sizes["data"] * sizes["fsdp"]
    elif mode == "pmap":
        width = n
    else:
        width = jax.process_count()
    if batch % width:
        raise ParallelConfigError(
            f"batch_size {batch} is not divisible by the {width} data-parallel shards "
            f"({mode} mode on {n} devices); use a multiple of {width}"
        )


def _truncate_metrics(path, step: int) -> int:
    """Drops the records of ``path`` (metrics.jsonl, local or gs://) after ``step`` and a torn last line; -> count."""
    path = files.path(path)
    if not path.exists():
        return 0
    lines = path.read_text(encoding="utf-8").splitlines()
    keep = []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line cut by a kill
        if int(rec.get("step", 0)) <= step:
            keep.append(line)
    dropped = len(lines) - len(keep)
    if dropped:
        files.write_text(path, "".join(l + "\n" for l in keep))
    return dropped


def _poison(batch: Dict[str, Any]) -> Dict[str, Any]:
    """A copy of ``batch`` whose first float input is NaN (the ``batch@N:nan`` fault)."""
    inputs = dict(batch["inputs"])
    for m in sorted(inputs):
        x = np.array(inputs[m])
        if x.dtype.kind == "f":
            x[...] = np.nan
            inputs[m] = x
            break
    return dict(batch, inputs=inputs)


def train_and_evaluate(config: Any, workdir: str, *, data_fn: Optional[DataFn] = None,
                       info_fn: Optional[Callable[[Any], Dict[str, Any]]] = None,
                       console: Optional[TextIO] = log_lib.STDOUT, stop_at: Optional[int] = None) -> Dict[str, Any]:
    """Trains ``config`` in ``workdir`` (resuming from its checkpoints) and returns the final eval metrics.

    Args:
      data_fn: ``(config, split, *, global_batch_size, seed, train, start_step)``
        -> iterator of this process's numpy batches (default:
        :func:`mmjax.data.factory.make_data`).
      info_fn: config -> {"num_classes": C, ...} (default: :func:`mmjax.data.factory.data_info`).
      stop_at: leave the loop after this step (with a checkpoint), as a
        preempted job would; a later call on the same workdir resumes.

    Reliability (see RELIABILITY.md): the workdir is locked against a second
    run; the first batch is validated on the host against the spec of the
    config and dataset before anything compiles (later batches per
    ``train.validate_batches`` / ``train.check_finite``); the newest readable
    checkpoint is restored (a damaged one is reported and set aside);
    SIGTERM saves a checkpoint at the next step boundary and returns
    ``{"step", "stopped_at", "preempted": True}``.

    Writes WORKDIR/metrics.jsonl, WORKDIR/tensorboard/, WORKDIR/checkpoints/ and
    (when training finished) WORKDIR/results.json.
    """
    if data_fn is None or info_fn is None:
        from mmjax.data import factory  # imported on use: importing the loop does not load the dataset readers
        data_fn = data_fn or factory.make_data
        info_fn = info_fn or factory.data_info
    check_workdir(workdir)
    check_config(config)
    is_main = jax.process_index() == 0
    console = log_lib.resolve_console(console)
    lock = health.workdir_lock(workdir, say=lambda line: console and print(line, file=console, flush=True),
                               lease_s=_get(config, "workdir_lease_s", None))
    if is_main:
        lock.acquire()
    try:
        with health.PreemptionGuard() as guard:
            return _train(config, workdir, data_fn, info_fn, console, stop_at, guard, lock)
    finally:
        lock.release()


def _train(config, workdir, data_fn, info_fn, console, stop_at, guard, lock) -> Dict[str, Any]:
    health.install_checkpoint_fault()
    info = info_fn(config)
    num_classes = int(info["num_classes"])
    total_steps = int(config.total_steps)
    batch_size = int(config.batch_size)
    train_cfg = _as_dict(_get(config, "train", {}))
    validate_mode = train_cfg.get("validate_batches", "every")
    finite_mode = train_cfg.get("check_finite", "first")
    for key, value in (("validate_batches", validate_mode), ("check_finite", finite_mode)):
        if value not in ("every", "first", "off"):
            raise BatchValidationError(f"train.{key} must be 'every', 'first' or 'off', got {value!r}")
    nan_stop = train_cfg.get("nan_policy", "skip") == "stop"
    loss_name = _as_dict(_get(config, "loss", {})).get("name", "softmax_xent")
    runner = build(config, num_classes, info)
    model_cfg = _as_dict(config.model)
    task = getattr(runner, "task", None)
    label_kind = None
    if task is not None and task.name != "classification":
        # Contrastive / captioning configs name their inputs in their own way (towers,
        # encoder + target); validate against the dataset's modalities instead, and take
        # the label kind from the data (COCO's multi-hot objects ride along unused).
        model_cfg = {"encoders": {m: {} for m in (info.get("modalities") or ())}}
        multi = _as_dict(_get(config, "data", {})).get("label_kind") == "multi_hot"
        label_kind = "multi" if multi else "int"
    spec = validation.spec_from_config(model_cfg, info, loss=loss_name,
                                       batch_size=batch_size // jax.process_count(), label=label_kind)
    ckpt = open_checkpoints(config, workdir)
    is_main = jax.process_index() == 0
    writer = None
    try:
        def say(line: str) -> None:
            if is_main and console is not None:
                print(line, file=console, flush=True)
        seed = int(_get(config, "seed", 0))
        rng = jax.random.PRNGKey(seed)
        def batches_from(step):
            it = data_fn(config, _get(config, "train_split", "train"), global_batch_size=batch_size, seed=seed, train=True, start_step=step)
            first, it = _peek(iter(it))
            spec.validate(first, check_finite=finite_mode != "off", where=f"train batch at step {step + 1}")
            return first, it

        steps = ckpt.agreed_steps()  # process 0's list on every process
        start = int(steps[-1]) if steps else 0
        example, train_iter = batches_from(start)
        state = None
        if steps:
            state, restored = ckpt.restore_latest_good(_first_trace(runner.abstract_state, example, rng), say,
                                                       config=config)
            if state is None:
                raise CheckpointError(f"no checkpoint in {ckpt.directory} could be read; move that directory "
                                      "away to start from scratch")
            _check_data_position(ckpt, int(restored), config)
            if int(restored) != start:
                start = int(restored)
                example, train_iter = batches_from(start)
            state = runner.place_restored(state)
        if is_main:
            dropped = _truncate_metrics(files.path(workdir) / "metrics.jsonl", start)
            if dropped:
                say(f"metrics.jsonl: dropped {dropped} records after step {start} (they will be replayed)")
        writer = log_lib.MetricWriter(workdir, enabled=is_main, tensorboard=bool(_get(config, "tensorboard", True)),
                                      console=console)
        spec = spec.freeze(example)
        if state is not None:
            say(f"resumed from {ckpt.directory} at step {start}")
        else:
            state = _first_trace(runner.create_state, example, rng)
            init_from = _as_dict(_get(config, "init_from", {}))
            if init_from.get("path") or init_from.get("pretrained") or init_from.get("params") is not None:
                state = apply_init_from(runner, state, init_from, say=say)
        return _loop(config, workdir, runner, state, ckpt, writer, say, data_fn, train_iter, spec, start,
                     num_classes, stop_at, guard, nan_stop, validate_mode, finite_mode, lock)
    finally:
        ckpt.close()
        if writer is not None:
            writer.close()


def _check_lease(lock, ckpt: Checkpointer) -> None:
    """Stops every process (WorkdirBusyError) when process 0 lost the workdir lease to another run."""
    if isinstance(lock, health.WorkdirLock):
        return  # a local lock cannot be lost
    lost = int(bool(lock.lost)) if jax.process_index() == 0 else 0
    if jax.process_count() > 1:
        lost = ckpt.agreement.decision(lost)
    if lost:
        lock.check()
        raise health.WorkdirBusyError("process 0 lost the workdir lease to another run; stopping without saving")


def _check_data_position(ckpt: Checkpointer, step: int, config: Any) -> None:
    """The data position of a checkpoint is its step in units of the global batch it was written with:
    resuming with another batch size would repeat or skip examples, so it is refused."""
    saved = (ckpt.metadata(step).get("config") or {}).get("batch_size")
    if saved is not None and int(saved) != int(config.batch_size):
        raise CheckpointError(
            f"checkpoint {step} in {ckpt.directory} was written with batch_size {saved}, this run has "
            f"{int(config.batch_size)}: its data position (step {step} of {saved} examples) does not map to "
            f"another batch size; resume with --config.batch_size={saved}, or train in a new workdir "
            f"(--config.init_from.path=... keeps the weights)")


def _first_trace(fn, example, rng):
    """Runs the first trace of the model on ``example``; model errors about the inputs become BatchValidationError.

    Config errors raised while tracing (a bad model or optimizer option) pass through as they are.
    """
    try:
        return fn(example, rng)
    except (CheckpointError, validation.BatchValidationError, ModelConfigError, OptimConfigError,
            AttentionConfigError):
        raise
    except ValueError as e:
        if type(e).__module__.startswith(("jax", "flax", "optax", "orbax")):
            raise
        raise validation.BatchValidationError(
            f"the model rejected the first batch ({type(e).__name__}): {' '.join(str(e).split())}") from None


def _loop(config, workdir, runner, state, ckpt, writer, say, data_fn, train_iter, spec, start, num_classes,
          stop_at, guard, nan_stop, validate_mode, finite_mode, lock) -> Dict[str, Any]:
    total_steps = int(config.total_steps)
    batch_size = int(config.batch_size)
    seed = int(_get(config, "seed", 0))
    is_main = jax.process_index() == 0
    log_every = int(_get(config, "log_every", 50))
    eval_every = int(_get(config, "eval_every", 0))
    ckpt_every = int(_get(config, "checkpoint_every", 0))
    eval_steps = _get(config, "eval_steps", None)
    eval_split = _get(config, "eval_split", "test")
    cfg_dict = _as_dict(config)
    progress = log_lib.Progress(total_steps, batch_size, start)
    last = stop_at if stop_at is not None else total_steps
    last = min(last, total_steps)

    def do_eval(step, state):
        health.fault("during_eval", step)
        ev = evaluate_split(runner, state, config, data_fn, num_classes)
        classification = getattr(runner, "task", None) is None
        writer.write(step, {k: v for k, v in ev.items()
                            if k in ("loss", "accuracy", "macro_f1", "per_class") or not classification and
                            k in _scalars(ev)}, prefix="eval/")
        say(f"eval @ {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in _scalars(ev).items()))
        return ev

    # Non-finite steps are counted on device (no host sync per step) and read when logging.
    nonfinite = jax.numpy.zeros((), jax.numpy.float32)
    skipped_before = 0
    step = start
    eval_metrics: Optional[Dict[str, Any]] = None
    preempted = False
    def checked(batches):
        """Host-side checks of each batch, in step order, before it is put on the device."""
        for k, batch in enumerate(batches):
            s = start + k
            where = f"train batch at step {s + 1}"
            if validate_mode == "every" and s > start:
                spec.validate(batch, check_finite=False, where=where)
            if health.fault("batch", s + 1) == "nan":
                batch = _poison(batch)
            if finite_mode == "every" or (finite_mode == "first" and s == start):
                try:
                    spec.validate(batch, check_finite=True, where=where)
                except validation.BatchValidationError as e:
                    if nan_stop or "NaN/Inf" not in str(e):
                        raise
                    say(f"warning: {e}; the update of step {s + 1} will be skipped (train.nan_policy='skip')")
            yield batch

    device_batches = prefetch_to_device(checked(train_iter), runner.put_batch, size=DEVICE_PREFETCH)
    while step < last:
        state, m = runner.train_step(state, next(device_batches))
        step += 1
        nonfinite = nonfinite + (1.0 - m["finite"].reshape(-1)[0])
        health.fault("after_step", step)
        if nan_stop or step % log_every == 0 or step == last:
            host = runner.train_metrics(m)
            if host["finite"] < 1 and nan_stop:
                raise TrainingDiverged(
                    f"loss or gradient norm is not finite at step {step} (loss={host['loss']}, "
                    f"grad_norm={host['grad_norm']}); nothing of that step was applied or saved; the last good "
                    f"checkpoint is step {ckpt.latest_step()} in {ckpt.directory}"
                )
            if step % log_every == 0 or step == last:
                speed = progress.update(step)
                record = {k: v for k, v in host.items() if k not in ("finite", "weight")}
                record.update(speed)
                skipped = int(jax.device_get(nonfinite))
                record["skipped_nonfinite"] = skipped
                if skipped > skipped_before:
                    say(f"warning: {skipped - skipped_before} update(s) skipped for non-finite loss or gradients "
                        f"up to step {step}")
                    skipped_before = skipped
                writer.write(step, record)
                say(log_lib.format_line(step, total_steps, host, speed))
        preempted = guard.requested(step)
        evaluated = (bool(eval_every and step % eval_every == 0) or step == total_steps) and not preempted
        t0 = time.perf_counter()
        if evaluated:
            eval_metrics = do_eval(step, state)
        if (ckpt_every and step % ckpt_every == 0) or step == last or preempted:
            _check_lease(lock, ckpt)
            writer.sync()  # object stores: the logs up to this step are stored before its checkpoint
            ckpt.save(step, runner.host_state(state), config=cfg_dict,
                      metrics=_scalars(eval_metrics) if evaluated and eval_metrics else None,
                      force=True)
            health.fault("after_save", step)
        progress.exclude(time.perf_counter() - t0)
        if preempted:
            ckpt.wait()
            say(f"preempted ({guard.signal_name or 'preemption notice'}): saved checkpoint {step} in "
                f"{ckpt.directory}; run the same command again to resume")
            return {"step": step, "stopped_at": step, "preempted": True}
    ckpt.wait()
    if step >= total_steps:
        if eval_metrics is None:
            eval_metrics = do_eval(step, state)
        results = {"step": step, "eval_split": eval_split, **eval_metrics}
        if is_main:
            files.write_text(files.path(workdir) / "results.json", json.dumps(log_lib._json_value(results), indent=2))
        return results
    return {"step": step, "stopped_at": step}


def evaluate(config: Any, workdir: str, *, which: str = "best", data_fn: Optional[DataFn] = None,
             info_fn: Optional[Callable[[Any], Dict[str, Any]]] = None,
             console: Optional[TextIO] = log_lib.STDOUT) -> Dict[str, Any]:
    """Restores the best (or latest) checkpoint of ``workdir``, evaluates it, writes WORKDIR/eval/metrics.json."""
    console = log_lib.resolve_console(console)
    if data_fn is None or info_fn is None:
        from mmjax.data import factory  # imported on use: importing the loop does not load the dataset readers
        data_fn = data_fn or factory.make_data
        info_fn = info_fn or factory.data_info
    if which not in ("best", "latest"):
        raise ValueError(f"which must be 'best' or 'latest', got {which!r}")
    info = info_fn(config)
    num_classes = int(info["num_classes"])
    runner = build(config, num_classes, info)
    ckpt = open_checkpoints(config, workdir, for_eval=True)
    try:
        step = ckpt.agreed(ckpt.best_step() if which == "best" else ckpt.latest_step())
        if step is None:
            raise CheckpointError(f"no checkpoint in {ckpt.directory}: train first")
        seed = int(_get(config, "seed", 0))
        batch_size = int(config.batch_size)
        split = _get(config, "eval_split", "test")
        it = data_fn(config, split, global_batch_size=batch_size, seed=seed, train=False, start_step=0)
        example, it = _peek(iter(it))
        state = runner.place_restored(ckpt.restore(runner.abstract_state(example, jax.random.PRNGKey(seed)), step,
                                                         config=config))
        ev = evaluate_split(runner, state, config, data_fn, num_classes, os.fspath(files.path(workdir) / "eval"))
    finally:
        ckpt.close()
    out = {"step": int(step), "checkpoint": which, "eval_split": split, **ev}
    if jax.process_index() == 0:
        files.write_text(files.path(workdir) / "eval" / "metrics.json", json.dumps(log_lib._json_value(out), indent=2))
        if console is not None:
            print(f"eval of step {step} ({which}): " + ", ".join(f"{k} {v:.4f}" for k, v in _scalars(ev).items()),
                  file=console)
    return out
