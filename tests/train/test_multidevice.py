"""Single vs pmap vs sharded on 8 CPU devices, and 2 processes x 2 devices vs 1 x 4.

Each check runs in a child process (the device count must be set before JAX
starts); several checks share one child so compile costs are paid once.
"""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_multidevice_child.py")
# Same global batch, same math: only the reduction order differs across layouts.
RTOL = 1e-5

pytestmark = pytest.mark.multidevice


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["JAX_PLATFORMS"] = "cpu"
    env.pop("XLA_FLAGS", None)
    return env


def _result(stdout: str) -> dict:
    lines = [l for l in stdout.splitlines() if l.startswith("RESULT ")]
    assert lines, stdout
    return json.loads(lines[-1][len("RESULT "):])


def _run(*args, timeout=400):
    p = subprocess.run([sys.executable, CHILD, *args], capture_output=True, text=True, env=_env(),
                       timeout=timeout, cwd=ROOT)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return _result(p.stdout)


@pytest.fixture(scope="module")
def compare(tmp_path_factory):
    return _run("compare", "--workdir", str(tmp_path_factory.mktemp("ckpt")))


def test_all_modes_give_the_same_losses_with_dropout_on(compare):
    # Each example's dropout mask is the one a single device draws for it: pmap replicas take their
    # rows of the global batch's mask, sharded jit draws it partitioned (jax_threefry_partitionable).
    assert compare["devices"] == 8
    ref = np.asarray(compare["single"])
    assert np.all(np.isfinite(ref)) and ref[1] < ref[0]
    assert np.all(np.abs(ref - np.asarray(compare["single_dropout_0"])) > 1e-3)  # dropout is on
    for mode in ("pmap", "data", "data_fsdp", "data_tensor"):
        np.testing.assert_allclose(compare[mode], ref, rtol=RTOL, err_msg=mode)


def test_parameters_are_really_sharded(compare):
    # fusion/proj/kernel is (fusion_in, fusion_out) -> (fsdp, tensor) under the default rules.
    k = "fusion/proj/kernel"
    assert compare["data_shards"][k]["shard"] == compare["data_shards"][k]["shape"]  # replicated
    fsdp = compare["data_fsdp_shards"][k]
    assert fsdp["shape"] == [16, 8] and fsdp["shard"] == [4, 8], fsdp
    tensor = compare["data_tensor_shards"][k]
    assert tensor["shard"] == [16, 2], tensor
    # Norm-free biases over "fusion_out" follow tensor parallelism too.
    assert compare["data_tensor_shards"]["fusion/proj/bias"]["shard"] == [2]


def test_sharded_checkpoint_restores_into_target_shardings(compare):
    assert compare["restore_equal"]
    assert compare["restore_specs_equal"]
    assert compare["opt_state_sharded"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_processes(mode, devices, n=2, timeout=400, every=False):
    """``n`` child processes of ``mode`` joined by jax.distributed (gloo) -> process 0's RESULT
    (``every``: each process's, in process order)."""
    port = _free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, CHILD, mode, "--devices", str(devices), "--coordinator", f"127.0.0.1:{port}",
             "--num_processes", str(n), "--process_id", str(i)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT,
        )
        for i in range(n)
    ]
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            assert p.returncode == 0, out[-3000:] + err[-3000:]
            outs.append(out)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return [_result(out) for out in outs] if every else _result(outs[0])


@pytest.mark.slow
def test_two_processes_match_one_process():
    single = _run("single4", "--devices", "4")
    multi = _run_processes("multiproc", devices=2)
    assert multi["processes"] == 2 and multi["devices"] == 4
    np.testing.assert_allclose(multi["losses"], single["losses"], rtol=RTOL)


@pytest.mark.slow
def test_tensor_axis_across_two_processes_matches_one_process():
    # Mesh data=-1, tensor=2: in 1 process x 2 devices both devices hold all 16 rows; with
    # 2 processes x 1 device each process reads 8 rows, and both tensor replicas need all 16.
    single = _run("tensor2", "--devices", "2")
    multi = _run_processes("tensor2", devices=1)
    assert single["mesh"] == multi["mesh"] == {"data": 1, "fsdp": 1, "tensor": 2}
    assert single["direct"] and not multi["direct"]   # the rows are moved between the processes
    assert single["rows"] == multi["rows"] == 16
    np.testing.assert_allclose(multi["losses"], single["losses"], rtol=RTOL)


def test_single_mode_in_two_processes_is_refused():
    # Each process would run its own one-device step on its own rows: two models, no gradient sync.
    outs = _run_processes("single", devices=1, every=True)
    assert [out["processes"] for out in outs] == [2, 2]
    for out in outs:
        for where in ("check_config", "train_step"):  # the CLI's first check, and a library Runner
            err = out[where]
            assert err.get("kind") == "ParallelConfigError", (where, err)
            assert "\n" not in err["error"]
            for word in ("parallel.mode=single", "2 processes", "parallel.mode=auto", "sharded"):
                assert word in err["error"], (where, word, err["error"])
