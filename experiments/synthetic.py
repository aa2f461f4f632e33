"""SYNTHETIC data, generated in memory, for tests and smoke runs (not a benchmark).

Two vector modalities ``a`` (B, dims["a"]) and ``b`` (B, dims["b"]) drawn from
a standard normal; the label is ``argmax(a @ W_a + b @ W_b)`` for fixed random
matrices, so it depends on *both* modalities (neither alone determines it).
Every batch is a pure function of (seed, split, step): a run that restarts at
step s sees exactly the batches it would have seen, and each process takes
its own equal slice of the global batch.
"""
from __future__ import annotations

import math
import zlib
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Type

import numpy as np

SPLITS = ("train", "test", "validation")


def _rng(seed: int, *parts: Any) -> np.random.RandomState:
    key = zlib.crc32(repr((seed,) + parts).encode())
    return np.random.RandomState(key)


def info(data_config: Mapping[str, Any]) -> Dict[str, Any]:
    dims = dict(data_config.get("dims") or {"a": 6, "b": 4})
    return {"num_classes": int(data_config.get("num_classes", 2)), "modalities": sorted(dims),
            "dims": dims, "synthetic": True}


def _examples(data_config: Mapping[str, Any], seed: int, split: str, index: int, n: int) -> Dict[str, Any]:
    meta = info(data_config)
    dims, c = meta["dims"], meta["num_classes"]
    # The labelling rule depends only on the data seed, not on the split.
    rule = _rng(int(data_config.get("rule_seed", 0)), "rule")
    weights = {m: rule.randn(dims[m], c) for m in sorted(dims)}
    r = _rng(seed, split, index)
    inputs = {m: r.randn(n, dims[m]).astype(np.float32) for m in sorted(dims)}
    score = sum(inputs[m] @ weights[m] for m in sorted(dims))
    score = score + float(data_config.get("label_noise", 0.0)) * r.randn(*score.shape)
    label = np.argmax(score, axis=-1).astype(np.int32)
    missing = float(data_config.get("missing_rate", 0.0))
    modality_mask = {m: (r.rand(n) >= missing) for m in sorted(dims)}
    return {"inputs": inputs, "modality_mask": modality_mask, "label": label}


def _process_slice(batch: Dict[str, Any], process_index: int, process_count: int,
                   error: Type[Exception] = ValueError) -> Dict[str, Any]:
    import jax
    n = len(batch["label"])
    if n % process_count:
        raise error(f"synthetic data: batch size {n} is not divisible by {process_count} processes")
    k = n // process_count
    return jax.tree.map(lambda x: x[process_index * k:(process_index + 1) * k], batch)


def batches(examples: Callable[[Mapping[str, Any], int, str, int, int], Dict[str, Any]],
            data_config: Mapping[str, Any], split: str, *, global_batch_size: int, seed: int, train: bool,
            start_step: int = 0, process_index: Optional[int] = None, process_count: Optional[int] = None,
            error: Type[Exception] = ValueError) -> Iterator[Dict[str, Any]]:
    """The batching every in-memory synthetic source shares, around its
    ``examples(data_config, seed, split, index, n)`` generator.

    Train: endless, batch ``s`` generated from (seed, split, s) for s >= start_step.
    Eval (``train=False``): ``data.eval_examples`` examples in batches of
    ``global_batch_size``; the last batch is padded with ``weight`` 0 rows.
    Each process keeps its own contiguous slice of every global batch.
    """
    import jax
    if split not in SPLITS:
        raise error(f"synthetic data: unknown split {split!r}; known: {SPLITS}")
    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    if train:
        step = start_step
        while True:
            batch = examples(data_config, seed, split, step, global_batch_size)
            batch["weight"] = np.ones(global_batch_size, np.float32)
            yield _process_slice(batch, pi, pc, error)
            step += 1
    total = int(data_config.get("eval_examples", 64))
    for i in range(math.ceil(total / global_batch_size)):
        batch = examples(data_config, seed, split, i, global_batch_size)
        real = min(global_batch_size, total - i * global_batch_size)
        batch["weight"] = (np.arange(global_batch_size) < real).astype(np.float32)
        yield _process_slice(batch, pi, pc, error)


def make_iterator(data_config: Mapping[str, Any], split: str, *, global_batch_size: int, seed: int,
                  train: bool, start_step: int = 0, process_index: Optional[int] = None,
                  process_count: Optional[int] = None) -> Iterator[Dict[str, Any]]:
    """Synthetic batches of this process's rows (see :func:`batches`)."""
    return batches(_examples, data_config, split, global_batch_size=global_batch_size, seed=seed, train=train,
                   start_step=start_step, process_index=process_index, process_count=process_count)
