"""Start-up without flags: which environments call jax.distributed.initialize() (mmjax.train.distributed)."""
import argparse

import pytest

from experiments.commands import train as train_cmd
from mmjax.train import distributed

SLURM = {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "node[001-002]", "SLURM_NTASKS": "2",
         "SLURM_PROCID": "1", "SLURM_LOCALID": "0"}
OMPI = {"OMPI_MCA_orte_hnp_uri": "1531576320.0;tcp://10.96.0.1:34911", "OMPI_COMM_WORLD_SIZE": "4",
        "OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_LOCAL_RANK": "3"}


def pci(root, *devices):
    """A stand-in /sys/bus/pci/devices at ``root`` with (vendor, class) per device."""
    root.mkdir()
    for i, (vendor, pci_class) in enumerate(devices):
        d = root / f"0000:00:{i:02x}.0"
        d.mkdir()
        (d / "vendor").write_text(vendor + "\n")
        (d / "class").write_text(pci_class + "\n")
    return str(root)


@pytest.fixture
def no_pci(tmp_path):
    return pci(tmp_path / "pci")


def test_slurm_srun_with_several_tasks(no_pci):
    c = distributed.detect_cluster(SLURM, no_pci)
    assert c.kind == "SLURM" and c.processes == 2 and "SLURM_NTASKS=2" in str(c)


@pytest.mark.parametrize("change", [{"SLURM_NTASKS": "1"}, {"SLURM_PROCID": None}, {"SLURM_STEP_NODELIST": None}])
def test_slurm_without_a_multi_task_step_is_one_process(change, no_pci):
    # One task, or an salloc shell / batch script outside srun (no SLURM_PROCID / step node list).
    env = {k: v for k, v in {**SLURM, **change}.items() if v is not None}
    assert distributed.detect_cluster(env, no_pci) is None


def test_open_mpi(no_pci):
    c = distributed.detect_cluster(OMPI, no_pci)
    assert c.kind == "Open MPI" and c.processes == 4
    assert distributed.detect_cluster({**OMPI, "OMPI_COMM_WORLD_SIZE": "1"}, no_pci) is None


def test_open_mpi_5_without_the_launcher_uri_is_a_one_line_error(no_pci):
    env = {k: v for k, v in OMPI.items() if k != "OMPI_MCA_orte_hnp_uri"}
    with pytest.raises(distributed.DistributedConfigError, match="--num_processes 4 --process_id"):
        distributed.detect_cluster(env, no_pci)


def test_tpu_on_gke_and_multislice(no_pci):
    c = distributed.detect_cluster({"TPU_WORKER_HOSTNAMES": "w-0,w-1,w-2,w-3", "TPU_WORKER_ID": "2"}, no_pci)
    assert c.kind == "TPU (GKE)" and c.processes == 4
    c = distributed.detect_cluster({"TPU_WORKER_HOSTNAMES": "w-0", "MEGASCALE_NUM_SLICES": "2"}, no_pci)
    assert c.processes == 2
    assert distributed.detect_cluster({"TPU_WORKER_HOSTNAMES": "w-0"}, no_pci) is None


def test_cloud_tpu_vm_needs_libtpu_and_a_tpu_chip(tmp_path, monkeypatch):
    tpu = pci(tmp_path / "tpu", ("0x1ae0", "0x020000"), ("0x1ae0", "0x120000"))
    gvnic_only = pci(tmp_path / "vm", ("0x1ae0", "0x020000"))
    monkeypatch.setattr(distributed, "_has_libtpu", lambda: True)
    c = distributed.detect_cluster({}, tpu)
    assert c.kind == "Cloud TPU VM" and c.processes is None and "TPU metadata" in str(c)
    assert distributed.detect_cluster({}, gvnic_only) is None            # a GCE VM's network card
    assert distributed.detect_cluster({"TPU_SKIP_MDS_QUERY": "1"}, tpu) is None
    monkeypatch.setattr(distributed, "_has_libtpu", lambda: False)
    assert distributed.detect_cluster({}, tpu) is None


@pytest.fixture
def calls(monkeypatch):
    seen = []
    monkeypatch.setattr(distributed.jax.distributed, "initialize", lambda *a, **k: seen.append((a, k)))
    monkeypatch.setattr(distributed, "_cpu_collectives", lambda: None)
    return seen


def test_initialize_calls_bare_initialize_where_detected(calls, monkeypatch):
    monkeypatch.setattr(distributed, "PCI_DEVICES", "/nonexistent")
    lines = []
    assert distributed.initialize(environ=SLURM, say=lines.append)
    assert calls == [((), {})]
    assert "SLURM (2 processes" in lines[0] and "--no-distributed" in lines[0]
    assert not distributed.initialize(environ=SLURM, auto=False)
    assert not distributed.initialize(environ={}, say=lines.append)
    assert distributed.initialize(environ={}, auto=True)                 # --distributed
    assert distributed.initialize("127.0.0.1:1234", 2, 1, environ=SLURM)  # explicit flags win
    assert calls[-1] == (("127.0.0.1:1234",), {"num_processes": 2, "process_id": 1})
    assert len(calls) == 3 and len(lines) == 1


def test_cli_distributed_flag_has_three_states():
    parser = argparse.ArgumentParser()
    train_cmd.add_common(parser)
    parse = lambda *a: parser.parse_args(["synthetic", "--workdir", "w", *a]).distributed  # noqa: E731
    assert parse() is None and parse("--distributed") is True and parse("--no-distributed") is False
