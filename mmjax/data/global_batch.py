"""Per-process numpy batches -> global jax.Arrays, and prefetching them ahead of the step.

Every process calls the same code with its own share of the global batch (rows
``process_index`` of ``process_count`` equal parts).
"""
from __future__ import annotations

import collections
import functools
import itertools
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mmjax.train.mesh import ParallelConfigError, rows_follow_processes


@functools.lru_cache(maxsize=None)
def _rows_direct(sharding: jax.sharding.Sharding, rows: int, processes: int) -> bool:
    """Whether every process's devices under ``sharding`` hold exactly its own rows of the batch."""
    return rows_follow_processes(sharding.devices_indices_map((rows,)), rows, processes)


def _process_sharding(sharding: jax.sharding.Sharding) -> NamedSharding:
    """Rows split over processes in process order, replicated over each process's devices."""
    devices = sorted(sharding.device_set, key=lambda d: (d.process_index, d.id))
    processes = jax.process_count()
    if len(devices) % processes:
        raise ParallelConfigError(f"sharded: {len(devices)} devices are not split evenly over {processes} processes")
    grid = np.asarray(devices, dtype=object).reshape(processes, len(devices) // processes)
    return NamedSharding(Mesh(grid, ("process", "local")), P("process"))


def to_global(batch: Any, sharding: jax.sharding.Sharding) -> Any:
    """This process's batch (a pytree of numpy arrays, leading dim B / process_count, its rows
    [p*B/P, (p+1)*B/P)) -> global jax.Arrays with leading dim B laid out by ``sharding`` (e.g.
    ``NamedSharding(mesh, P(("data", "fsdp")))``). Every process must call it with its own part.

    When every process's devices hold exactly its own rows (data / fsdp over processes in process
    order) the rows go straight to them. Otherwise (``tensor`` across processes: the replicas of a
    row live on several processes; or a topology-ordered mesh that puts the processes in another
    order) the rows are first placed on their own process's devices and then moved on device to
    where the sharding wants them (``jax.device_put``, a collective that every process runs with
    the same decision)."""
    processes = jax.process_count()
    rows = int(np.shape(jax.tree.leaves(batch)[0])[0]) * processes

    def put(target):
        return jax.tree.map(lambda x: jax.make_array_from_process_local_data(
            target, np.asarray(x), (rows,) + np.shape(x)[1:]), batch)
    if _rows_direct(sharding, rows, processes):
        return put(sharding)
    return jax.device_put(put(_process_sharding(sharding)), sharding)


def to_local(x: jax.Array, sharding: jax.sharding.Sharding) -> np.ndarray:
    """The inverse of :func:`to_global` for one array: a global array with leading dim B whose rows
    are laid out by ``sharding`` -> this process's rows [p*B/P, (p+1)*B/P) as numpy. Every process
    must call it (when its rows live on other processes' devices they are first moved on device)."""
    rows = int(x.shape[0])
    if not _rows_direct(sharding, rows, jax.process_count()):
        x = jax.device_put(x, _process_sharding(sharding))
    shards = {}
    for s in x.addressable_shards:  # replicas (a tensor axis) hold the same rows: keep one each
        shards.setdefault(s.index[0].indices(rows)[:2], s.data)
    return np.concatenate([np.asarray(shards[k]) for k in sorted(shards)])


def prefetch_to_device(batches, put: Callable[[Any], Any], size: int = 2):
    """Yields ``put(batch)`` for each host batch, ``size`` batches ahead: the transfers of the next
    batches run while the current step computes (jax dispatches them asynchronously)."""
    it = iter(batches)
    queue = collections.deque(put(b) for b in itertools.islice(it, max(size, 1)))
    while queue:
        ready = queue.popleft()
        queue.extend(put(b) for b in itertools.islice(it, 1))  # refill first: `size` stay in flight
        yield ready
