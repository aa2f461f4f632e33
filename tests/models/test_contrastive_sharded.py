"""Sharded contrastive losses equal the single-device loss on the same global
batch (values and gradients), on 8 CPU devices in a child process."""
import os
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent(
    """
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=1"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import AxisType
    from mmjax.models import contrastive_loss as L
    from mmjax.models.contrastive import ContrastiveModel
    from mmjax.sharding import BatchShards

    assert jax.device_count() == 8
    rng = np.random.default_rng(0)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
    a = unit(rng.normal(size=(16, 4))).astype(np.float32)
    b = unit(rng.normal(size=(16, 4))).astype(np.float32)
    t, bias = jnp.float32(1.7), jnp.float32(-3.0)
    explicit = jax.make_mesh((4, 2), ("data", "fsdp"))
    auto = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
    cases = [
        ("clip", lambda a, b, t, c: L.clip_loss(a, b, t),
         lambda m, ax: lambda a, b, t, c: L.sharded_clip_loss(a, b, t, m, ax)),
        ("siglip", L.siglip_loss,
         lambda m, ax: lambda a, b, t, c: L.sharded_siglip_loss(a, b, t, c, m, ax)),
        ("ring", L.siglip_loss,
         lambda m, ax: lambda a, b, t, c: L.ring_siglip_loss(a, b, t, c, m, ax)),
    ]
    for name, single, sharded in cases:
        v1, g1 = jax.value_and_grad(single, argnums=(0, 1, 2, 3))(a, b, t, bias)
        # Explicit-axis meshes (make_mesh's default) and auto ones; 2-D axes once.
        meshes = ((explicit, ("data", "fsdp")), (auto, "data")) if name == "clip" else ((auto, "data"),)
        for mesh, axes in meshes:
            v2, g2 = jax.jit(jax.value_and_grad(sharded(mesh, axes), argnums=(0, 1, 2, 3)))(a, b, t, bias)
            np.testing.assert_allclose(v2, v1, rtol=1e-5, err_msg=name)
            for x, y, what in zip(g2, g1, ("a", "b", "log_scale", "bias")):
                np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6, err_msg=f"{name} grad {what}")
            assert float(jnp.abs(g1[2])) > 0
    # Per-device memory of the gather version is O(local x global): the compiled
    # HLO holds a (2, 16) logits block per device, never (16, 16).
    hlo = jax.jit(lambda a, b, t: L.sharded_clip_loss(a, b, t, auto)).lower(a, b, t).compile().as_text()
    assert "f32[2,16]" in hlo and "f32[16,16]" not in hlo
    with np.testing.assert_raises_regex(L.ContrastiveLossError, "not divisible"):
        L.sharded_clip_loss(a[:12], b[:12], t, auto)

    # The model's loss_fn with a mesh equals its single-device loss, params' gradients included.
    towers = {"image": {"encoder": "mlp", "features": (6,)}, "text": {"encoder": "mlp", "features": (5,)}}
    batch = {"inputs": {"image": rng.normal(size=(16, 3)).astype(np.float32),
                        "text": rng.normal(size=(16, 2)).astype(np.float32)}}
    for loss in ("clip", "siglip"):
        model = ContrastiveModel(towers=towers, embed_dim=4, loss=loss)
        params = jax.jit(model.init)(jax.random.key(0, impl="unsafe_rbg"), batch)["params"]
        f = lambda p, shards: model.apply({"params": p}, batch, method="loss_fn", shards=shards)[0]
        v1, g1 = jax.value_and_grad(f)(params, BatchShards())
        v2, g2 = jax.jit(jax.value_and_grad(lambda p: f(p, BatchShards(("data",), auto))))(params)
        np.testing.assert_allclose(v2, v1, rtol=1e-5)
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6), g2, g1)
        # pmap, each replica with its rows: the same global loss and (after the step's pmean) gradients.
        rows = jax.tree.map(lambda x: x.reshape((8, 2) + x.shape[1:]), batch)
        def replica(p, b):
            v, g = jax.value_and_grad(lambda q: model.apply({"params": q}, b, method="loss_fn",
                                                            shards=BatchShards(("batch",)))[0])(p)
            return v, jax.lax.pmean(g, "batch")
        v3, g3 = jax.pmap(replica, axis_name="batch", in_axes=(None, 0))(params, rows)
        np.testing.assert_allclose(np.asarray(v3), np.full(8, v1), rtol=1e-5)
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x[0], y, rtol=1e-4, atol=1e-6), g3, g1)
    print("SHARDED_OK")
    """
)


@pytest.mark.multidevice
def test_sharded_losses_equal_single_device():
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and "SHARDED_OK" in proc.stdout, proc.stdout + proc.stderr
