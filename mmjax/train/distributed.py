"""Multi-process start-up: ``jax.distributed.initialize`` from command-line options or the environment.

One process per host (GPU nodes: one per GPU under SLURM / Open MPI, where
JAX gives each process the GPU of its local rank), all running the same
command:

* Explicit (any cluster, or several processes on one machine)::

    python -m experiments train EXP --workdir gs://.../run \\
        --coordinator HOST0:1234 --num_processes N --process_id I

* Detected (no flags): where the environment says the job has several
  processes, bare ``jax.distributed.initialize()`` is called and finds the
  coordinator, the process count and this process's id itself
  (:func:`detect_cluster` reads the same variables as JAX's cluster
  detection):

  - SLURM: ``srun`` sets ``SLURM_JOB_ID``, ``SLURM_STEP_NODELIST``,
    ``SLURM_NTASKS`` > 1, ``SLURM_PROCID``, ``SLURM_LOCALID``::

      srun --nodes 2 --ntasks-per-node 8 --gpus-per-node 8 \\
        python -m experiments train EXP --workdir /shared/run

  - Open MPI 4 (``mpirun``): ``OMPI_MCA_orte_hnp_uri`` and
    ``OMPI_COMM_WORLD_SIZE`` > 1. Open MPI 5 does not publish the launcher's
    address: a one-line error asks for the explicit flags.
  - TPU: GKE (``TPU_WORKER_HOSTNAMES`` / ``TPU_PROCESS_ADDRESSES`` with several
    hosts, or ``MEGASCALE_NUM_SLICES`` > 1), and Cloud TPU VMs (libtpu
    installed and a TPU chip on the PCI bus; JAX reads the worker list from the
    TPU metadata server; a single-host VM starts a 1-process runtime)::

      gcloud compute tpus tpu-vm ssh NAME --zone ZONE --worker=all \\
        --command="cd mmjax && python -m experiments train EXP --workdir gs://bucket/run"

  ``--distributed`` calls ``jax.distributed.initialize()`` whatever the
  environment says; ``--no-distributed`` never starts it. The workdir must be
  shared by all processes (GCS or a network file system): Orbax writes one
  checkpoint from all of them.

On CPU the cross-process collectives use gloo, which is switched on before
``initialize``.
"""
from __future__ import annotations

import dataclasses
import glob
import importlib.util
import os
import sys
from typing import Callable, Mapping, Optional

import jax

from mmjax import errors

PCI_DEVICES = "/sys/bus/pci/devices"
GOOGLE_PCI_VENDOR = "0x1ae0"


class DistributedConfigError(errors.ConfigError):
    """Inconsistent --coordinator / --num_processes / --process_id, or a launcher JAX cannot read."""


@dataclasses.dataclass(frozen=True)
class Cluster:
    """A multi-process environment: its kind, the process count where the variables say it, and why."""

    kind: str
    processes: Optional[int]
    evidence: str

    def __str__(self) -> str:
        count = f"{self.processes} processes" if self.processes else "process count from the TPU metadata"
        return f"{self.kind} ({count}; {self.evidence})"


def _int(environ: Mapping[str, str], key: str) -> int:
    try:
        return int(environ.get(key, "") or 0)
    except ValueError:
        return 0


def _has_tpu_chip(pci_root: str) -> bool:
    """A Google PCI device that is not a network card (gVNIC): a TPU chip."""
    for device in glob.glob(os.path.join(pci_root, "*")):
        try:
            with open(os.path.join(device, "vendor"), encoding="ascii") as f:
                vendor = f.read().strip()
            with open(os.path.join(device, "class"), encoding="ascii") as f:
                pci_class = f.read().strip()
        except OSError:
            continue
        if vendor == GOOGLE_PCI_VENDOR and not pci_class.startswith("0x02"):
            return True
    return False


def _has_libtpu() -> bool:
    return importlib.util.find_spec("libtpu") is not None


def _tpu_cluster(environ: Mapping[str, str], pci_root: str) -> Optional[Cluster]:
    hosts = environ.get("TPU_PROCESS_ADDRESSES") or environ.get("TPU_WORKER_HOSTNAMES") or ""
    slices = max(_int(environ, "MEGASCALE_NUM_SLICES"), 1)
    workers = len([h for h in hosts.split(",") if h.strip()])
    if workers * slices > 1:
        return Cluster("TPU (GKE)", workers * slices if workers else None,
                       f"{workers} workers per slice, {slices} slices")
    if "TPU_SKIP_MDS_QUERY" in environ or not _has_libtpu() or not _has_tpu_chip(pci_root):
        return None
    return Cluster("Cloud TPU VM", None, "libtpu and a TPU chip on the PCI bus")


def detect_cluster(environ: Optional[Mapping[str, str]] = None, pci_root: str = PCI_DEVICES) -> Optional[Cluster]:
    """The multi-process environment that bare ``jax.distributed.initialize()`` would configure, or None.

    Raises:
      DistributedConfigError: Open MPI with several processes but no ``OMPI_MCA_orte_hnp_uri``.
    """
    environ = os.environ if environ is None else environ
    slurm = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
    if all(k in environ for k in slurm) and _int(environ, "SLURM_NTASKS") > 1:
        n = _int(environ, "SLURM_NTASKS")
        return Cluster("SLURM", n, f"SLURM_NTASKS={n}, SLURM_PROCID={environ['SLURM_PROCID']}")
    ompi = _int(environ, "OMPI_COMM_WORLD_SIZE")
    if ompi > 1:
        if "OMPI_MCA_orte_hnp_uri" not in environ:
            raise DistributedConfigError(
                f"Open MPI started {ompi} processes but OMPI_MCA_orte_hnp_uri is not set (Open MPI 5), so "
                "jax.distributed.initialize() cannot find the coordinator: pass --coordinator HOST:PORT "
                f"--num_processes {ompi} --process_id $OMPI_COMM_WORLD_RANK"
            )
        return Cluster("Open MPI", ompi, f"OMPI_COMM_WORLD_SIZE={ompi}")
    return _tpu_cluster(environ, pci_root)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def initialize(coordinator: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, auto: Optional[bool] = None,
               environ: Optional[Mapping[str, str]] = None,
               say: Callable[[str], None] = _stderr) -> bool:
    """Starts the multi-process runtime; returns True when it did. Call before any other JAX use.

    Args:
      coordinator, num_processes, process_id: all three, or none.
      auto: None (default): start it when :func:`detect_cluster` finds a multi-process
        environment; True: always (``--distributed``); False: never (``--no-distributed``).
      environ: the environment to read (default ``os.environ``); say: where the line about a
        detected environment goes (default stderr).
    """
    explicit = [coordinator is not None, num_processes is not None, process_id is not None]
    if any(explicit) and not all(explicit):
        raise DistributedConfigError(
            "multi-process needs all of --coordinator HOST:PORT, --num_processes N and --process_id I"
        )
    if all(explicit):
        if not 0 <= process_id < num_processes:
            raise DistributedConfigError(f"--process_id {process_id} is not in [0, {num_processes})")
        if ":" not in coordinator:
            raise DistributedConfigError(f"--coordinator must be HOST:PORT, got {coordinator!r}")
        _cpu_collectives()
        jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)
        return True
    if auto is False:
        return False
    if auto is None:
        cluster = detect_cluster(environ)
        if cluster is None:
            return False
        say(f"multi-process environment: {cluster}; calling jax.distributed.initialize() "
            "(--no-distributed runs a single process)")
    _cpu_collectives()
    jax.distributed.initialize()
    return True


def _cpu_collectives() -> None:
    """gloo for CPU collectives across processes: harmless where another backend ends up chosen."""
    platforms = (jax.config.jax_platforms or "").lower()
    if platforms in ("cpu", ""):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
