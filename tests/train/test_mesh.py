"""Meshes from the topology (mmjax.train.mesh) on stand-in devices, and which rows each process holds.

The stand-ins carry the attributes ``jax.experimental.mesh_utils`` reads (``id``,
``process_index``, ``platform``, ``device_kind``, ``slice_index``; TPU ones also
``coords`` and ``core_on_chip``), as mesh_utils' own tests do.
"""
import dataclasses
from typing import Optional, Tuple

import numpy as np
import pytest
from jax.experimental import mesh_utils

from mmjax.train.mesh import ParallelConfigError, device_grid, rows_by_process, rows_follow_processes
from mmjax.train.parallel import Runner


@dataclasses.dataclass(frozen=True)
class Device:
    id: int
    process_index: int = 0
    slice_index: Optional[int] = None
    platform: str = "cpu"
    device_kind: str = "cpu"
    coords: Tuple[int, int, int] = (0, 0, 0)
    core_on_chip: int = 0


def ids(grid):
    return np.vectorize(lambda d: d.id)(grid)


def attr(grid, name):
    return np.vectorize(lambda d: getattr(d, name))(grid)


def cpu_devices(n, per_process=None, per_slice=None):
    return [Device(i, process_index=i // per_process if per_process else 0,
                   slice_index=i // per_slice if per_slice else None) for i in range(n)]


def tpu_v4_4x4():
    """16 TPU v4 chips on a 4x4x1 torus, 4 hosts of 2x2 chips, listed host by host."""
    out = []
    for host in range(4):
        for k in range(4):
            x, y = 2 * (host % 2) + k % 2, 2 * (host // 2) + k // 2
            out.append(Device(len(out), process_index=host, slice_index=0, platform="tpu",
                              device_kind="TPU v4", coords=(x, y, 0)))
    return out


def test_one_slice_of_cpu_devices_keeps_the_device_order():
    devs = cpu_devices(8, per_process=4)
    grid = device_grid({"data": -1, "fsdp": 2, "tensor": 2}, devs)
    assert grid.shape == (2, 2, 2)
    np.testing.assert_array_equal(ids(grid).ravel(), np.arange(8))


def test_tpu_devices_are_laid_out_by_their_torus_coordinates():
    devs = tpu_v4_4x4()
    grid = device_grid({"data": -1, "tensor": 4}, devs)
    np.testing.assert_array_equal(ids(grid), ids(mesh_utils.create_device_mesh((4, 1, 4), devs)))
    # Each tensor group is one row of the torus, not four consecutive ids (one host's 2x2 block).
    coords = np.vectorize(lambda d: d.coords[1])(grid)
    assert all(len(set(row.ravel())) == 1 for row in coords)
    assert not np.array_equal(ids(grid).ravel(), np.arange(16))


def test_two_slices_put_data_across_them_and_tensor_inside():
    devs = cpu_devices(8, per_process=2, per_slice=4)
    grid = device_grid({"data": -1, "tensor": 2}, devs, {"data": 2})
    assert grid.shape == (4, 1, 2)
    slices = attr(grid, "slice_index")
    np.testing.assert_array_equal(slices[:2], 0)
    np.testing.assert_array_equal(slices[2:], 1)
    # fsdp across slices: the same split along the second axis.
    grid = device_grid({"data": 1, "fsdp": 4, "tensor": 2}, devs, {"fsdp": 2})
    np.testing.assert_array_equal(attr(grid, "slice_index")[0, :2], 0)
    np.testing.assert_array_equal(attr(grid, "slice_index")[0, 2:], 1)


def test_without_slice_index_processes_are_the_slices():
    devs = cpu_devices(8, per_process=4)
    grid = device_grid({"data": -1, "tensor": 2}, devs, {"data": 2})
    np.testing.assert_array_equal(attr(grid, "process_index")[:2], 0)
    np.testing.assert_array_equal(attr(grid, "process_index")[2:], 1)


@pytest.mark.parametrize("mesh, dcn, devs, message", [
    ({"data": -1, "tensor": 2}, {"tensor": 2}, cpu_devices(8, per_slice=4), "parallel.dcn_mesh.tensor must be 1"),
    ({"data": 2, "tensor": 4}, {"data": 4}, cpu_devices(8, per_slice=2), "does not divide parallel.mesh.data=2"),
    ({"data": -1}, {"data": 4}, cpu_devices(8, per_slice=4), "spans 4 slices, but the devices form 2"),
    ({"data": -1}, {}, cpu_devices(8, per_slice=4), "--config.parallel.dcn_mesh.data=2"),
    ({"data": -1}, {"pipeline": 2}, cpu_devices(8), "parallel.dcn_mesh: unknown axes ['pipeline']"),
])
def test_bad_dcn_meshes_are_one_line_errors(mesh, dcn, devs, message):
    with pytest.raises(ParallelConfigError) as e:
        device_grid(mesh, devs, dcn)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_the_runner_refuses_tensor_across_slices():
    with pytest.raises(ParallelConfigError, match="parallel.dcn_mesh.tensor must be 1"):
        Runner("sharded", None, lambda p: None, mesh_cfg={"data": -1}, dcn_cfg={"tensor": 2})


def batch_indices(grid, rows):
    """What NamedSharding(mesh, P(("data", "fsdp"))).devices_indices_map((rows,)) gives for ``grid``."""
    data, fsdp, _ = grid.shape
    block = rows // (data * fsdp)
    return {d: (slice((i * fsdp + j) * block, (i * fsdp + j + 1) * block),)
            for (i, j, _), d in np.ndenumerate(grid)}


def test_rows_follow_processes_for_data_parallel_in_process_order():
    grid = device_grid({"data": -1, "fsdp": 2}, cpu_devices(8, per_process=4))
    held = rows_by_process(batch_indices(grid, 16), 16)
    assert held == {0: [(0, 8)], 1: [(8, 16)]}
    assert rows_follow_processes(batch_indices(grid, 16), 16, 2)


def test_rows_do_not_follow_processes_when_tensor_spans_them():
    # 2 processes x 1 device, tensor=2: both hold every row, the pipeline gives each half.
    grid = device_grid({"data": -1, "tensor": 2}, cpu_devices(2, per_process=1))
    assert rows_by_process(batch_indices(grid, 8), 8) == {0: [(0, 8)], 1: [(0, 8)]}
    assert not rows_follow_processes(batch_indices(grid, 8), 8, 2)


def test_rows_do_not_follow_processes_in_a_topology_order():
    # data=8, tensor=2 on the 4x4 torus: the data axis visits the hosts 0 2 1 3 (one torus row each).
    grid = device_grid({"data": 8, "tensor": 2}, tpu_v4_4x4())
    held = rows_by_process(batch_indices(grid, 16), 16)
    assert held == {0: [(0, 4)], 2: [(4, 8)], 1: [(8, 12)], 3: [(12, 16)]}
    assert not rows_follow_processes(batch_indices(grid, 16), 16, 4)
