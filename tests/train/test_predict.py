"""Runner.predict: the model's logits in the runner's own parallel mode equal a plain ``model.apply``
on the host params (single mode in process; sharded with params split over fsdp and tensor, and
pmap, on 8 CPU devices in a child process)."""
import os
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
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
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


def test_single_mode_predict_equals_model_apply():
    namespace = {}
    exec(SETUP, namespace)
    namespace["check"]("single", rows=5)
    namespace["check"]("sharded", {"data": -1}, rows=4)  # the sharded path on this process's devices


@pytest.mark.multidevice
def test_sharded_and_pmap_predict_equal_model_apply_on_8_devices():
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "PREDICT_OK" in proc.stdout, proc.stdout + proc.stderr
