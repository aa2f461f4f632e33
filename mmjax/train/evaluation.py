"""Evaluating a state or a run's checkpoint on a split.

Train-time evals and the choice of the "best" checkpoint use
``config.eval_split`` (a validation split; see :mod:`mmjax.train.selection`);
the test split (``config.test_split``) is evaluated once, from the selected
checkpoint, at the end of training and by :func:`evaluate`.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, TextIO, Tuple

import jax

from mmjax.train import builder, files, selection
from mmjax.train import logging as log_lib
from mmjax.train.checkpoint import Checkpointer, CheckpointError
from mmjax.train.checksum import DamagedCheckpointError
from mmjax.train.config_access import setting
from mmjax.train.parallel import Runner

DataFn = Callable[..., Iterator[Dict[str, Any]]]


def evaluate_split(runner: Runner, state, config: Any, data_fn: DataFn, out_dir: Optional[str] = None,
                   split: Optional[str] = None) -> Dict[str, Any]:
    """The eval metrics of ``state`` on ``split`` (default ``config.eval_split``): the runner's task's evaluation."""
    seed, batch_size = int(setting(config, "seed")), int(config.batch_size)

    def batches(name):
        return data_fn(config, name, global_batch_size=batch_size, seed=seed, train=False, start_step=0)
    return runner.task.evaluate(runner, state, batches, out_dir, split=split)


def scalars(m: Mapping[str, Any]) -> Dict[str, float]:
    """The number-valued entries of a metrics dict."""
    return {k: float(v) for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def selected_step(ckpt: Checkpointer, which: str) -> int:
    """The step of the ``which`` ("best" | "latest") checkpoint, agreed by every process."""
    if which not in ("best", "latest"):
        raise ValueError(f"which must be 'best' or 'latest', got {which!r}")
    step = ckpt.agreed(ckpt.best_step() if which == "best" else ckpt.latest_step())
    if step is None:
        raise CheckpointError(f"no checkpoint in {ckpt.directory}: train first")
    return int(step)


def restore(runner: Runner, ckpt: Checkpointer, step: int, example: Dict[str, Any], config: Any):
    """Checkpoint ``step`` placed as ``runner`` runs it (``example``: one batch, for the shapes)."""
    seed = int(setting(config, "seed"))
    abstract = runner.abstract_state(example, jax.random.PRNGKey(seed))
    return runner.place_restored(ckpt.restore(abstract, step, config=config))


def restore_selected(runner: Runner, ckpt: Checkpointer, which: str, example: Dict[str, Any], config: Any,
                     say: Optional[Callable[[str], None]] = None) -> Tuple[int, Any]:
    """-> (step, state) of the ``which`` ("best" | "latest") checkpoint, restored and verified.

    A damaged one (unreadable, checksum mismatch, non-finite params) is set aside as
    training does (reported through ``say``) and the next ``which`` one is tried; none
    left is a one-line :class:`CheckpointError`.
    """
    while True:
        step = selected_step(ckpt, which)
        try:
            return step, restore(runner, ckpt, step, example, config)
        except DamagedCheckpointError as e:
            ckpt.set_aside(step, e.__cause__ or e, say)


def test_of_selected(runner: Runner, state, step: int, ckpt: Checkpointer, config: Any,
                     data_fn: DataFn) -> Optional[Dict[str, Any]]:
    """``config.test_split`` metrics of the best checkpoint (``state`` when that is step ``step``).

    None when the config has no test split, or it is the selection split itself.
    """
    test_split = setting(config, "test_split")
    if not test_split or test_split == setting(config, "eval_split"):
        return None
    best = ckpt.agreed(ckpt.best_step())
    best = step if best is None else int(best)
    chosen = state
    if best != step:
        best, chosen = restore_selected(runner, ckpt, "best", first_batch(config, data_fn, test_split)[0], config)
    return {"step": best, "split": test_split,
            **evaluate_split(runner, chosen, config, data_fn, split=test_split)}


def evaluate(config: Any, workdir: str, *, which: str = "best", split: Optional[str] = None,
             data_fn: Optional[DataFn] = None, info_fn: Optional[Callable[[Any], Dict[str, Any]]] = None,
             console: Optional[TextIO] = log_lib.STDOUT) -> Dict[str, Any]:
    """Restores the best (or latest) checkpoint of ``workdir``, evaluates it on ``split``, writes
    WORKDIR/eval/metrics.json.

    ``split`` defaults to ``config.test_split`` (else ``config.eval_split``): the
    checkpoint was selected on the validation split, the test split reports it.
    """
    console = log_lib.resolve_console(console)
    if data_fn is None or info_fn is None:
        from mmjax.data import factory  # imported on use: importing the loop does not load the dataset readers
        data_fn = data_fn or factory.make_data
        info_fn = info_fn or factory.data_info
    info = info_fn(config)
    config, _ = selection.resolve(config, info)
    split = split or setting(config, "test_split") or setting(config, "eval_split")
    runner = builder.build(config, int(info["num_classes"]), info)
    say = (lambda line: print(line, file=console, flush=True)) if console is not None else None
    ckpt = builder.open_checkpoints(config, workdir, for_eval=True, say=say)
    try:
        example, _ = first_batch(config, data_fn, split)
        step, state = restore_selected(runner, ckpt, which, example, config, say)
        ev = evaluate_split(runner, state, config, data_fn, os.fspath(files.path(workdir) / "eval"), split=split)
    finally:
        ckpt.close()
    out = {"step": int(step), "checkpoint": which, "eval_split": split, **ev}
    if jax.process_index() == 0:
        files.write_text(files.path(workdir) / "eval" / "metrics.json", json.dumps(log_lib._json_value(out), indent=2))
        if console is not None:
            print(f"eval of step {step} ({which}) on {split}: "
                  + ", ".join(f"{k} {v:.4f}" for k, v in scalars(ev).items()), file=console)
    return out


def first_batch(config: Any, data_fn: DataFn, split: str) -> Tuple[Dict[str, Any], Iterator[Dict[str, Any]]]:
    """The first eval batch of ``split`` and the iterator over all of them (the first included)."""
    it = iter(data_fn(config, split, global_batch_size=int(config.batch_size), seed=int(setting(config, "seed")),
                      train=False, start_step=0))
    first = next(it)

    def chained():
        yield first
        yield from it
    return first, chained()
