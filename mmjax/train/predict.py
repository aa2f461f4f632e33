"""The model's eval-mode outputs (a classifier's (B, C) logits) in a runner's own parallel mode.

:meth:`mmjax.train.parallel.Runner.predict` runs ``model.apply(variables, batch, train=False)``
on the state as the runner placed it (never copied to the host): ``single`` under ``jax.jit``,
``pmap`` replicated over the local devices with each replica on its rows, ``sharded`` with the
params' shardings and the batch split over ("data", "fsdp"). Every process passes its own rows
and gets the outputs of those rows back, in order, as numpy; :func:`gather_rows` then joins every
process's rows (process 0's first), for metrics over the whole split.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np

from mmjax.data.global_batch import to_local
from mmjax.train.mesh import check_processes

PyTree = Any


def compile_outputs(runner) -> Callable[[Any, PyTree], PyTree]:
    """-> ``outputs(state, batch)`` for a :meth:`Runner.put_batch` batch, compiled for ``runner.mode``;
    its outputs keep the batch's layout (pmap: (local devices, B / devices, ...); sharded: rows
    split as the batch's)."""
    check_processes(runner.mode, jax.process_count())
    model = runner.model

    def outputs(state, batch):
        return model.apply(state.variables, batch, train=False)
    if runner.mode == "single":
        return jax.jit(outputs)
    if runner.mode == "pmap":
        return jax.pmap(outputs, devices=runner._pmap_devices)
    if runner.state_shardings is None:
        raise RuntimeError("sharded runner: create_state or abstract_state must run before predict")
    return jax.jit(outputs, in_shardings=(runner.state_shardings, runner.batch_sharding),
                   out_shardings=runner.batch_sharding)


def process_rows(runner, out: PyTree) -> PyTree:
    """Outputs of :func:`compile_outputs` -> numpy, this process's rows in the order it gave them."""
    if runner.mode == "pmap":
        return jax.tree.map(lambda x: np.asarray(x).reshape((-1,) + x.shape[2:]), out)
    if runner.mode == "sharded":
        return jax.tree.map(lambda x: to_local(x, runner.batch_sharding), out)
    return jax.tree.map(np.asarray, out)


def gather_rows(tree: PyTree) -> PyTree:
    """Every process's numpy rows (leading dim, the same count on each) -> all of them concatenated in
    process order, on every process; unchanged in a run of one process. A collective: every process
    calls it with the same structure."""
    if jax.process_count() == 1:
        return tree
    from jax.experimental import multihost_utils
    return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))
