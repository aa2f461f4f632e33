"""The items of a step and the ``before_commit`` fault point (public Orbax handlers only)."""
import json
import os

import numpy as np
import pytest

from mmjax.train import checkpoint_items, faults
from mmjax.train.checkpoint import Checkpointer


def test_step_of_reads_the_step_of_an_item_directory():
    assert checkpoint_items.step_of("/w/checkpoints/4.orbax-checkpoint-tmp-17/checksums.orbax-checkpoint-tmp") == 4
    assert checkpoint_items.step_of("gs://b/run/checkpoints/12/checksums") == 12
    assert checkpoint_items.step_of("/w/other/checksums") is None


@pytest.mark.parametrize("async_save", [False, True])
def test_before_commit_sees_the_whole_step_written_and_not_committed(tmp_path, monkeypatch, async_save):
    ckdir = tmp_path / "checkpoints"
    seen = []
    original = faults.fault

    def record(point, step=None):
        if point == "before_commit":
            tmp = [d for d in os.listdir(ckdir) if d.startswith(f"{step}.")]
            items = sorted(os.listdir(ckdir / tmp[0])) if tmp else []
            seen.append((step, sorted(os.listdir(ckdir)), os.path.isdir(ckdir / str(step)), items))
        return original(point, step)
    monkeypatch.setattr(faults, "fault", record)

    ck = Checkpointer(str(ckdir), keep=2, best_metric="accuracy", async_save=async_save)
    ck.save(3, {"w": np.ones(3, np.float32)}, metrics={"accuracy": 0.5})
    ck.wait()
    assert len(seen) == 1
    step, listing, committed, items = seen[0]
    assert step == 3 and not committed and "3" not in listing  # called before Orbax commits the step
    assert "state" in items and "meta" in items  # written and finalised
    assert [i for i in items if i.startswith("checksums")]
    assert ck.all_steps() == [3]
    ck.close()


def test_step_metadata_names_orbax_handlers(tmp_path):
    """The step metadata names Orbax's handlers, as before the checksums handler had a fault point."""
    ck = Checkpointer(str(tmp_path), keep=1)
    ck.save(1, {"w": np.ones(2, np.float32)})
    ck.close()
    with open(tmp_path / "1" / "_CHECKPOINT_METADATA") as f:
        handlers = json.load(f)["item_handlers"]
    assert handlers["checksums"] == handlers["meta"]
    assert handlers["checksums"].startswith("orbax.checkpoint.") and handlers["state"].startswith("orbax.checkpoint.")
