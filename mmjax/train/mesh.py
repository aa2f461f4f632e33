"""Device meshes from the topology, and which batch rows each process's devices hold.

``config.parallel.mesh`` ({data, fsdp, tensor}, one may be -1) is the shape of
the whole mesh. The devices are laid out by
``jax.experimental.mesh_utils``, which knows the physical topology (on TPU the
torus coordinates; elsewhere the device order):

* one slice: ``create_device_mesh(shape)``;
* several slices (TPU multislice, or GPU nodes joined by the data-center
  network): ``config.parallel.dcn_mesh`` says how many slices each axis spans,
  e.g. ``{data: 2}``, and ``create_hybrid_device_mesh(per_slice, dcn)`` keeps
  every other axis inside a slice. Only ``data`` and ``fsdp`` may span slices
  (their collectives are one gradient reduction / one gather per step);
  ``tensor`` across slices is refused. Slices are the devices' ``slice_index``
  where the platform sets it, else processes (CPU; GPUs without it).

``jax.make_mesh`` is not used: it builds Explicit-typed axes, and the runner's
shardings are Auto.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from jax.experimental import mesh_utils

from mmjax import errors
from mmjax.sharding import LOGICAL_RULES, MESH_AXES

Span = Tuple[int, int]


class ParallelConfigError(errors.ConfigError):
    """Bad ``config.parallel`` value (mode, mesh shape, rules) or a batch that does not fit it."""


def mesh_shape(mesh_cfg: Mapping[str, int], num_devices: int) -> Tuple[int, ...]:
    """{data, fsdp, tensor} with at most one -1 -> sizes in MESH_AXES order, product = num_devices."""
    cfg = dict(mesh_cfg or {})
    unknown = sorted(set(cfg) - set(MESH_AXES))
    if unknown:
        raise ParallelConfigError(f"parallel.mesh: unknown axes {unknown}; the axes are {list(MESH_AXES)}")
    sizes = [int(cfg.get(a, 1)) for a in MESH_AXES]
    if sizes.count(-1) > 1:
        raise ParallelConfigError(f"parallel.mesh: at most one axis may be -1, got {cfg}")
    if any(s == 0 or s < -1 for s in sizes):
        raise ParallelConfigError(f"parallel.mesh: sizes must be positive or -1, got {cfg}")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if num_devices % known:
            raise ParallelConfigError(
                f"parallel.mesh {cfg}: the fixed axes ({known}) do not divide the {num_devices} devices"
            )
        sizes[sizes.index(-1)] = num_devices // known
    if int(np.prod(sizes)) != num_devices:
        raise ParallelConfigError(
            f"parallel.mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices, "
            f"but {num_devices} are available"
        )
    return tuple(sizes)


def dcn_shape(dcn_cfg: Optional[Mapping[str, int]], sizes: Sequence[int]) -> Tuple[int, ...]:
    """parallel.dcn_mesh ({data: 2}: slices per axis, default 1) -> sizes in MESH_AXES order.

    Each must divide its axis of the whole mesh (``sizes``); ``tensor`` must be 1."""
    cfg = dict(dcn_cfg or {})
    unknown = sorted(set(cfg) - set(MESH_AXES))
    if unknown:
        raise ParallelConfigError(f"parallel.dcn_mesh: unknown axes {unknown}; the axes are {list(MESH_AXES)}")
    dcn = [int(cfg.get(a, 1)) for a in MESH_AXES]
    if any(d < 1 for d in dcn):
        raise ParallelConfigError(f"parallel.dcn_mesh: sizes must be positive, got {cfg}")
    if dcn[MESH_AXES.index("tensor")] != 1:
        raise ParallelConfigError(
            "parallel.dcn_mesh.tensor must be 1: tensor parallelism gathers activations in every layer, "
            "too often for the network between slices; put data or fsdp across slices"
        )
    for axis, size, d in zip(MESH_AXES, sizes, dcn):
        if size % d:
            raise ParallelConfigError(
                f"parallel.dcn_mesh.{axis}={d} does not divide parallel.mesh.{axis}={size}"
            )
    return tuple(dcn)


def _slice_key(devices: Sequence[Any]) -> str:
    """The device attribute that tells slices apart: ``slice_index`` where every device has one."""
    if all(getattr(d, "slice_index", None) is not None for d in devices):
        return "slice_index"
    return "process_index"


def device_grid(mesh_cfg: Mapping[str, int], devices: Sequence[Any],
                dcn_cfg: Optional[Mapping[str, int]] = None) -> np.ndarray:
    """The devices as an array of the mesh's shape (MESH_AXES order), laid out from the topology."""
    devices = list(devices)
    sizes = mesh_shape(mesh_cfg, len(devices))
    dcn = dcn_shape(dcn_cfg, sizes)
    key = _slice_key(devices)
    slices = len({getattr(d, key) for d in devices})
    if int(np.prod(dcn)) == 1:
        if key == "slice_index" and slices > 1:
            raise ParallelConfigError(
                f"the devices span {slices} slices: set parallel.dcn_mesh to say which axes cross them, "
                f"e.g. --config.parallel.dcn_mesh.data={slices}"
            )
        return mesh_utils.create_device_mesh(sizes, devices, allow_split_physical_axes=True)
    if slices != int(np.prod(dcn)):
        raise ParallelConfigError(
            f"parallel.dcn_mesh {dict(zip(MESH_AXES, dcn))} spans {int(np.prod(dcn))} slices, but the devices "
            f"form {slices} (by {key})"
        )
    per_slice = tuple(s // d for s, d in zip(sizes, dcn))
    return mesh_utils.create_hybrid_device_mesh(
        per_slice, dcn, devices, process_is_granule=key == "process_index", allow_split_physical_axes=True
    )


# --------------------------------------------------------------------------- batch rows
def _merge(spans: Sequence[Span]) -> List[Span]:
    """Sorted, overlapping or touching [start, stop) spans -> their union as disjoint spans."""
    out: List[Span] = []
    for lo, hi in sorted(spans):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def rows_by_process(indices: Mapping[Any, Tuple[slice, ...]], rows: int) -> Dict[int, List[Span]]:
    """process index -> the batch rows its devices hold, from a sharding's ``devices_indices_map((rows,))``."""
    spans: Dict[int, List[Span]] = {}
    for device, index in indices.items():
        lo, hi, _ = index[0].indices(rows)
        spans.setdefault(device.process_index, []).append((lo, hi))
    return {p: _merge(s) for p, s in spans.items()}


def rows_follow_processes(indices: Mapping[Any, Tuple[slice, ...]], rows: int, process_count: int) -> bool:
    """Whether every process ``p``'s devices hold exactly rows [p*rows/P, (p+1)*rows/P), the rows the
    data pipeline gives it; otherwise (a model axis across processes, or devices of the mesh in
    another order than the processes) a batch must be moved between processes to its devices."""
    share = rows // process_count
    held = rows_by_process(indices, rows)
    return all(held.get(p) == [(p * share, (p + 1) * share)] for p in range(process_count))


def check_processes(mode: str, processes: int) -> None:
    """Refuses ``single`` in a run of several processes: each process would run its own one-device
    step on its own rows, training ``processes`` independent models with no gradient sync."""
    if mode == "single" and processes > 1:
        raise ParallelConfigError(
            f"parallel.mode=single trains on one device of one process, but this run has {processes} processes "
            "(each would train its own model on its own rows, with no gradient sync): use parallel.mode=auto "
            "or sharded"
        )


def parse_rules(rules: Optional[Sequence[Sequence[Any]]]) -> Tuple[Tuple[str, Any], ...]:
    """config.parallel.rules (pairs [logical, mesh axis | [axes] | None]) -> flax rules; default LOGICAL_RULES."""
    if not rules:
        return tuple(LOGICAL_RULES)
    out = []
    for r in rules:
        if len(r) != 2:
            raise ParallelConfigError(f"parallel.rules: each rule is [logical_name, mesh_axis], got {r!r}")
        name, axes = r
        if isinstance(axes, (list, tuple)):
            axes = tuple(axes)
            bad = [a for a in axes if a not in MESH_AXES]
        else:
            bad = [] if axes is None or axes in MESH_AXES else [axes]
        if bad:
            raise ParallelConfigError(f"parallel.rules: {name!r} maps to unknown mesh axes {bad}")
        out.append((str(name), axes))
    return tuple(out)
