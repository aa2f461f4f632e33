"""Checkpoint retention: the last K plus the best by the chosen eval metric."""
import jax
import numpy as np

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
