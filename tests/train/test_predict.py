"""Runner.predict: the model's logits in the runner's own parallel mode equal a plain ``model.apply``
on the host params (single mode in process; sharded with params split over fsdp and tensor, and
pmap, on 8 CPU devices in a child process; two processes, whose rows gather_rows joins)."""
import os
import socket
import subprocess
import sys
import textwrap

import pytest

SETUP = textwrap.dedent(
    """
    import jax, numpy as np, optax
    from mmjax.models.classifier import build_classifier
    from mmjax.train.parallel import Runner
    from mmjax.train.tasks import ClassificationLoss

    MODEL = {"encoders": {"a": {"name": "mlp", "features": [8]}, "b": {"name": "mlp", "features": [8]}},
             "fusion_config": {"out_dim": 8}, "head_hidden": [8]}

    def batch(rows, seed):
        rng = np.random.default_rng(seed)
        return {"inputs": {"a": rng.normal(size=(rows, 6)).astype(np.float32),
                           "b": rng.normal(size=(rows, 4)).astype(np.float32)},
                "modality_mask": {"a": np.ones(rows, bool), "b": rng.random(rows) > 0.3}}

    def check(mode, mesh=None, rows=16):
        model = build_classifier(MODEL, 3)
        runner = Runner(mode, model, lambda p: optax.sgd(0.1), task=ClassificationLoss(num_classes=3),
                        mesh_cfg=mesh)
        state = runner.create_state(batch(rows, 0), jax.random.PRNGKey(0))
        host = jax.device_get(runner.host_state(state).variables)
        for seed in (1, 2):  # the second batch reuses the compiled function
            b = batch(rows, seed)
            got = runner.predict(state, b)
            want = np.asarray(model.apply(host, b, train=False))
            assert isinstance(got, np.ndarray) and got.shape == (rows, 3), (mode, got.shape)
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=f"{mode} {mesh}")
        return state
    """
)

CHILD = textwrap.dedent(
    """
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=1"
    os.environ["JAX_PLATFORMS"] = "cpu"
    """
) + SETUP + textwrap.dedent(
    """
    assert jax.device_count() == 8
    state = check("sharded", {"data": 2, "fsdp": 2, "tensor": 2})
    # The params stay split over the devices (predict never gathers them onto one).
    assert any(not x.sharding.is_fully_replicated for x in jax.tree.leaves(state.params))
    check("sharded", {"data": -1})
    check("pmap")
    print("PREDICT_OK")
    """
)

# One of two processes (gloo) with one device each: every process predicts its 8 rows of a 16-row
# batch; with tensor=2 the rows cross processes both ways. gather_rows joins them in process order.
PROCESS = textwrap.dedent(
    """
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1 --xla_backend_optimization_level=1"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax
    from mmjax.train import distributed
    distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
    """
) + SETUP + textwrap.dedent(
    """
    from jax.experimental import multihost_utils
    from mmjax.train.predict import gather_rows
    p = jax.process_index()
    for mesh in ({"data": -1}, {"tensor": 2}):
        model = build_classifier(MODEL, 3)
        runner = Runner("sharded", model, lambda params: optax.sgd(0.1), task=ClassificationLoss(num_classes=3),
                        mesh_cfg=mesh)
        full = batch(16, 1)
        mine = jax.tree.map(lambda x: x[8 * p:8 * (p + 1)], full)
        state = runner.create_state(mine, jax.random.PRNGKey(0))
        host = multihost_utils.process_allgather(state.variables, tiled=True)
        got = gather_rows(runner.predict(state, mine))
        np.testing.assert_allclose(got, model.apply(host, full, train=False), rtol=1e-5, atol=1e-6, err_msg=str(mesh))
    print("PROCESS_OK")
    """
)


def test_single_mode_predict_equals_model_apply():
    namespace = {}
    exec(SETUP, namespace)
    namespace["check"]("single", rows=5)
    namespace["check"]("sharded", {"data": -1}, rows=4)  # the sharded path on this process's devices


def _env():
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.mark.multidevice
def test_sharded_and_pmap_predict_equal_model_apply_on_8_devices():
    proc = subprocess.run([sys.executable, "-c", CHILD], env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "PREDICT_OK" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.slow
def test_two_processes_predict_their_rows_and_gather_the_batch():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, "-c", PROCESS, f"127.0.0.1:{port}", str(i)], env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0 and "PROCESS_OK" in out, out[-3000:] + err[-3000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
