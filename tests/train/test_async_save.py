"""checkpoint.async_save (the default): ``save`` returns before the checkpoint is committed; ``wait`` commits it."""
import os
import threading

import numpy as np

from mmjax.train.checkpoint import Checkpointer


def test_save_returns_while_the_commit_is_held_and_wait_finishes_it(tmp_path, monkeypatch):
    from orbax.checkpoint._src.path import atomicity

    release = threading.Event()
    original = atomicity.on_commit_callback

    async def held(tmp_dir, **kwargs):  # Orbax's rename of the finished temporary directory
        release.wait(60)
        return await original(tmp_dir, **kwargs)
    monkeypatch.setattr(atomicity, "on_commit_callback", held)

    ck = Checkpointer(str(tmp_path / "checkpoints"), keep=2, async_save=True)
    ck.save(1, {"w": np.ones(3, np.float32)})  # returns: the step loop would go on training here
    assert not os.path.exists(tmp_path / "checkpoints" / "1")  # not committed yet
    release.set()
    ck.wait()
    assert os.path.isdir(tmp_path / "checkpoints" / "1") and ck.all_steps() == [1]
    ck.close()
