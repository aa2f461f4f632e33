"""Checkpoint retention: the last K plus the best by the chosen eval metric."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.train.checkpoint import Checkpointer


def test_keeps_latest_and_best(tmp_path):
    ck = Checkpointer(str(tmp_path), keep=1, best_metric="accuracy", best_mode="max")
    tree = {"w": np.arange(3, dtype=np.float32)}
    for step, acc in [(1, 0.9), (2, 0.5), (3, None), (4, 0.7)]:
        ck.save(step, {"w": tree["w"] + step}, metrics=None if acc is None else {"accuracy": acc, "loss": 1.0},
                config={"seed": 0})
    ck.wait()
    assert ck.all_steps() == [1, 4]  # 1 is the best, 4 the latest
    assert ck.best_step() == 1 and ck.latest_step() == 4
    abstract = {"w": jax.ShapeDtypeStruct((3,), np.float32)}
    restored = ck.restore(abstract, step=1)
    np.testing.assert_array_equal(restored["w"], tree["w"] + 1)
    meta = ck.metadata(4)
    assert meta["data_position"] == 4 and meta["config"] == {"seed": 0} and meta["metrics"]["accuracy"] == 0.7
    ck.close()


@pytest.mark.parametrize("dtype", [np.float32, jnp.bfloat16])
def test_nonfinite_params_are_set_aside_and_the_previous_step_restored(tmp_path, dtype):
    """A checkpoint whose params hold NaN (saved so, checksums agree) is not a good one to resume from."""
    ck = Checkpointer(str(tmp_path / "checkpoints"), keep=3)
    good = np.arange(3).astype(dtype)
    ck.save(1, {"params": {"w": good}, "step": np.int32(1)})
    ck.save(2, {"params": {"w": np.array([np.nan, 1, 2]).astype(dtype)}, "step": np.int32(2)})
    ck.wait()
    said = []
    abstract = {"params": {"w": jax.ShapeDtypeStruct((3,), dtype)}, "step": jax.ShapeDtypeStruct((), np.int32)}
    state, step = ck.restore_latest_good(abstract, said.append)
    assert step == 1 and ck.all_steps() == [1]
    np.testing.assert_array_equal(state["params"]["w"], good)
    assert len(said) == 1 and said[0].startswith("checkpoint 2 in ") and "non-finite values in params/w" in said[0]
    ck.close()
