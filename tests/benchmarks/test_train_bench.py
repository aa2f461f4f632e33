"""The train-step timer threads the state through every step and the batch
follows the mmjax batch format."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import train_throughput as tt


def test_synthetic_batch_format():
    b = tt.synthetic_batch({"text": ((5,), "int32"), "vec": ((3,), "float32")}, 4, num_classes=7, seed=1)
    assert b["inputs"]["text"].shape == (4, 5) and b["inputs"]["text"].dtype == np.int32
    assert (b["inputs"]["text"] > 0).all()  # 0 is padding
    assert b["inputs"]["vec"].shape == (4, 3) and b["inputs"]["vec"].dtype == np.float32
    assert b["modality_mask"]["text"].all() and b["modality_mask"]["vec"].shape == (4,)
    assert b["label"].shape == (4,) and ((b["label"] >= 0) & (b["label"] < 7)).all()
    with pytest.raises(ValueError, match="'vec'.*dtype"):
        tt.synthetic_batch({"vec": ((3,), "float16")}, 4, 2)


def test_time_train_step_threads_state():
    # SGD on a least-squares problem: after n steps of lr 0.1 on loss 0.5 (w - 1)^2, w = 1 - 0.9^n.
    def step(state, batch):
        w, count = state
        g = w - batch["target"]
        return (w - 0.1 * g, count + 1), {"loss": 0.5 * jnp.sum(g * g)}

    state = (jnp.zeros((2,)), jnp.zeros((), jnp.int32))
    batch = {"target": jnp.ones((2,))}
    r = tt.time_train_step(step, state, batch, repeats=2, steps_per_repeat=3)
    w, count = r["state"]
    n = 1 + 2 * 3  # warm-up step + timed steps
    assert int(count) == n and r["steps_timed"] == 6
    np.testing.assert_allclose(np.asarray(w), 1 - 0.9**n, rtol=1e-5)
    assert r["examples_per_s"] == pytest.approx(2 * r["steps_per_s"]) and r["compile_s"] > 0


def test_run_without_train_system_says_so(tmp_path):
    try:
        import mmjax.train  # noqa: F401
    except ImportError:
        with pytest.raises(tt.TrainSystemUnavailable, match="mmjax.train"):
            tt.run(str(tmp_path), quick=True)
    else:
        pytest.skip("mmjax.train is present; wiring it is the lead's step")
