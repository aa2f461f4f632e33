"""Multi-process start-up: ``jax.distributed.initialize`` from command-line options.

One process per host (GPU nodes: one per node with all its GPUs, or one per
GPU), all running the same command:

* Explicit (any cluster, or several processes on one machine)::

    python -m experiments train EXP --workdir gs://.../run \\
        --coordinator HOST0:1234 --num_processes N --process_id I

* TPU pod slice: run the same command on every worker with ``--distributed``
  (bare ``jax.distributed.initialize()`` reads the topology from the TPU
  metadata), e.g.::

    gcloud compute tpus tpu-vm ssh NAME --zone ZONE --worker=all \\
      --command="cd mmjax && python -m experiments train EXP --workdir gs://bucket/run --distributed"

  ``--distributed`` also works under SLURM (``srun``), where JAX reads the
  ``SLURM_*`` variables. The workdir must be shared by all processes (GCS or
  a network file system): Orbax writes one checkpoint from all of them.

On CPU the cross-process collectives use gloo, which is switched on before
``initialize``.
"""
from __future__ import annotations

from typing import Optional

import jax


class DistributedConfigError(ValueError):
    """Inconsistent --coordinator / --num_processes / --process_id."""


def initialize(coordinator: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, auto: bool = False) -> bool:
    """Starts the multi-process runtime; returns True when it did. Call before any other JAX use."""
    explicit = [coordinator is not None, num_processes is not None, process_id is not None]
    if any(explicit) and not all(explicit):
        raise DistributedConfigError(
            "multi-process needs all of --coordinator HOST:PORT, --num_processes N and --process_id I"
        )
    if not any(explicit) and not auto:
        return False
    if all(explicit):
        if not 0 <= process_id < num_processes:
            raise DistributedConfigError(f"--process_id {process_id} is not in [0, {num_processes})")
        if ":" not in coordinator:
            raise DistributedConfigError(f"--coordinator must be HOST:PORT, got {coordinator!r}")
    platforms = (jax.config.jax_platforms or "").lower()
    if platforms in ("cpu", ""):
        # Harmless where another backend ends up chosen; needed for CPU collectives across processes.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if all(explicit):
        jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)
    else:
        jax.distributed.initialize()
    return True
