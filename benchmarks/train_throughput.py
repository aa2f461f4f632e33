"""Training-step throughput: steps/s and examples/s of a pure train step.

What is here does not depend on the training system: a synthetic batch in
the mmjax batch format and a timer for any pure ``(state, batch) -> (state,
metrics)`` step, compiled once (compile time reported separately), then run
in steady state with the state threaded through, as a real loop does.

NOTE: wiring to ``mmjax.train`` (building a classifier's TrainState and its
``train_step`` from a config, jit / pmap / sharded variants) is not done
here: ``mmjax.train`` was not in main when this file was written.
:func:`run` raises :class:`TrainSystemUnavailable` until it is; the wiring
is ``state, step = <mmjax.train factory>(config)`` followed by
``time_train_step(step, state, synthetic_batch(...))`` per configuration.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np


class TrainSystemUnavailable(RuntimeError):
    """``mmjax.train`` is not available in this checkout."""


def synthetic_batch(
    inputs: Mapping[str, Tuple[Tuple[int, ...], str]],
    batch_size: int,
    num_classes: int,
    *,
    seed: int = 0,
    vocab_size: int = 1000,
) -> Dict[str, Any]:
    """A random batch in the mmjax format (see ARCHITECTURE.md).

    Args:
      inputs: modality -> (per-example shape, dtype) with dtype "float32" or
        "int32" (token ids in [1, vocab_size), 0 is padding and never drawn).
      batch_size: B.
      num_classes: labels are drawn from [0, num_classes).
    Returns:
      {"inputs": {m: (B, ...)}, "modality_mask": {m: (B,) True}, "label": (B,) int32}.
    """
    if batch_size < 1 or num_classes < 1:
        raise ValueError(f"batch_size and num_classes must be >= 1, got {batch_size}, {num_classes}")
    rng = np.random.default_rng(seed)
    out: Dict[str, Any] = {"inputs": {}, "modality_mask": {}}
    for name, (shape, dtype) in sorted(inputs.items()):
        full = (batch_size,) + tuple(shape)
        if dtype == "int32":
            out["inputs"][name] = rng.integers(1, vocab_size, size=full, dtype=np.int32)
        elif dtype == "float32":
            out["inputs"][name] = rng.standard_normal(full, dtype=np.float32)
        else:
            raise ValueError(f"modality {name!r}: dtype must be 'float32' or 'int32', got {dtype!r}")
        out["modality_mask"][name] = np.ones((batch_size,), bool)
    out["label"] = rng.integers(0, num_classes, size=(batch_size,), dtype=np.int32)
    return out


def time_train_step(
    step: Callable[[Any, Any], Tuple[Any, Any]],
    state: Any,
    batch: Any,
    *,
    repeats: int = 5,
    steps_per_repeat: int = 10,
    jit: bool = True,
) -> Dict[str, Any]:
    """Steady-state speed of a pure train step.

    The step is compiled ahead of time (``jax.jit(step).lower(...).compile()``)
    unless ``jit=False`` (an already-wrapped pmap / sharded step), run once to
    warm up, then ``repeats`` times ``steps_per_repeat`` steps threading the
    state; each repeat ends with ``block_until_ready`` on the state.

    Returns:
      compile_s, step_s (median seconds per step), steps_per_s,
      examples_per_s, the final state (under "state") and the last metrics.
    """
    import jax

    leaves = jax.tree.leaves(batch)
    if not leaves:
        raise ValueError("batch has no arrays")
    batch_size = int(np.shape(leaves[0])[0])
    compile_s = None
    if jit:
        t0 = time.perf_counter()
        step = jax.jit(step).lower(state, batch).compile()
        compile_s = time.perf_counter() - t0
    state, metrics = step(state, batch)
    jax.block_until_ready(state)
    per_step = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps_per_repeat):
            state, metrics = step(state, batch)
        jax.block_until_ready(state)
        per_step.append((time.perf_counter() - t0) / steps_per_repeat)
    step_s = statistics.median(per_step)
    return {
        "compile_s": compile_s,
        "step_s": step_s,
        "steps_per_s": 1.0 / step_s,
        "examples_per_s": batch_size / step_s,
        "steps_timed": repeats * steps_per_repeat,
        "state": state,
        "metrics": metrics,
    }


def run(out_dir: str, *, quick: bool = False, fusions: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Train-step benchmark of a classifier per fusion block (needs ``mmjax.train``)."""
    try:
        import mmjax.train  # noqa: F401
    except ImportError as e:
        raise TrainSystemUnavailable(
            "bench train needs mmjax.train, which is not in this checkout yet "
            f"({e}); `bench fusion` works without it"
        ) from None
    raise TrainSystemUnavailable(
        "bench train: mmjax.train is present but not wired into benchmarks/train_throughput.py yet "
        "(see the module docstring)"
    )
