"""checkpoint.async_save (the default): ``save`` returns before the checkpoint is committed; ``wait`` commits it."""
import os
import threading

import numpy as np

from mmjax.train import faults
from mmjax.train.checkpoint import Checkpointer


def test_save_returns_while_the_commit_is_held_and_wait_finishes_it(tmp_path, monkeypatch):
    release = threading.Event()
    original = faults.fault

    def held(point, step=None):  # the before_commit point: the step is written, Orbax has not renamed it yet
        if point == "before_commit":
            release.wait(60)
        return original(point, step)
    monkeypatch.setattr(faults, "fault", held)

    ck = Checkpointer(str(tmp_path / "checkpoints"), keep=2, async_save=True)
    ck.save(1, {"w": np.ones(3, np.float32)})  # returns: the step loop would go on training here
    assert not os.path.exists(tmp_path / "checkpoints" / "1")  # not committed yet
    release.set()
    ck.wait()
    assert os.path.isdir(tmp_path / "checkpoints" / "1") and ck.all_steps() == [1]
    ck.close()
