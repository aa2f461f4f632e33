"""Processes agree on what to restore: process 0's steps and decisions, only process 0 moves a damaged step.

The unit tests drive :meth:`Checkpointer.restore_latest_good` with a scripted
:class:`Agreement` standing for the other process; the last test runs two
real processes (gloo on CPU, a few seconds) where only process 0 finds the
newest checkpoint damaged.
"""
import json
import os
import socket
import subprocess
import sys
import zlib

import jax
import numpy as np
import pytest

from mmjax.train.agreement import DAMAGED, MISMATCH, OK, Agreement
from mmjax.train.checkpoint import Checkpointer, CheckpointMismatchError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TARGET = {"w": jax.ShapeDtypeStruct((3,), np.float32)}


class Scripted(Agreement):
    """This process is ``index`` of two; for index 1, process 0's answers are scripted.

    ``main_steps``: the steps process 0 lists; ``verdicts``: its verdict on
    each step ({step: OK | DAMAGED | MISMATCH}, OK when not given). For index
    0, ``share`` and ``decision`` return this process's own values, as the real
    ones do on process 0.
    """

    count = 2

    def __init__(self, index, main_steps=None, verdicts=None):
        self.index, self.main_steps, self.verdicts = index, main_steps, dict(verdicts or {})
        self.queue, self.barriers = [], []

    @property
    def is_main(self):
        return self.index == 0

    def share(self, values):  # lists of steps
        values = [int(v) for v in values]
        if self.index == 1 and self.main_steps is not None:
            values = sorted(self.main_steps, reverse=len(values) > 1 and values[0] > values[-1])
        self.queue = list(values)
        return values

    def decision(self, value):  # the verdict on the next step of the shared list
        step = self.queue.pop(0)
        return value if self.index == 0 else self.verdicts.get(step, OK)

    def barrier(self, name):
        self.barriers.append(name)


def _saved(tmp_path, agreement, steps=(2, 4, 6)):
    ck = Checkpointer(str(tmp_path / "checkpoints"), keep=5, best_metric=None, agreement=agreement)
    for s in steps:
        ck.save(s, {"w": np.full(3, s, np.float32)})
    ck.wait()
    return ck


def test_single_process_agreement_is_local():
    a = Agreement()
    assert a.count == 1 and a.is_main
    assert a.share([3, 1]) == [3, 1] and a.decision(DAMAGED) == DAMAGED
    a.barrier("nothing to wait for")


def test_process_0_sets_aside_what_it_cannot_read(tmp_path, monkeypatch):
    agree = Scripted(0)
    ck = _saved(tmp_path, agree)
    monkeypatch.setattr("mmjax.train.faults.FAULTS", {("restore", 6): "damaged"})
    said = []
    state, step = ck.restore_latest_good(TARGET, said.append)
    assert step == 4 and np.array_equal(state["w"], np.full(3, 4))
    assert len(said) == 1 and said[0].startswith("checkpoint 6 in ") and "MMJAX_FAULT" in said[0]
    assert ck.all_steps() == [2, 4] and len(os.listdir(tmp_path / "checkpoints_corrupt")) == 1
    assert agree.barriers == ["mmjax_metrics_scan", "mmjax_quarantine_6"]
    ck.close()


def test_other_process_follows_process_0_and_moves_nothing(tmp_path):
    # Process 1 lists 2, 4, 6 and could read them all; process 0 listed 2 and 4 and found 4 damaged.
    agree = Scripted(1, main_steps=[2, 4], verdicts={4: DAMAGED})
    ck = _saved(tmp_path, agree)
    assert ck.agreed_steps() == [2, 4]
    said = []
    state, step = ck.restore_latest_good(TARGET, said.append)
    assert step == 2 and np.array_equal(state["w"], np.full(3, 2))
    assert "unreadable for process 0" in said[0]
    assert sorted(ck.all_steps()) == [2, 4, 6] and not os.path.exists(tmp_path / "checkpoints_corrupt")
    assert agree.barriers == ["mmjax_metrics_scan", "mmjax_quarantine_4"]  # waited for process 0's moves
    ck.close()


def test_a_mismatch_found_by_process_0_stops_the_others(tmp_path):
    agree = Scripted(1, verdicts={6: MISMATCH})
    ck = _saved(tmp_path, agree)
    with pytest.raises(CheckpointMismatchError, match=r"checkpoint 6 in .* does not fit this model \(found by process 0"):
        ck.restore_latest_good(TARGET)
    assert ck.all_steps() == [2, 4, 6] and not os.path.exists(tmp_path / "checkpoints_corrupt")
    ck.close()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_fall_back_together_when_process_0_finds_damage(tmp_path):
    """Process 1 could read step 4 and, on its own, would restore it while process 0 restores 2."""
    port, procs = _free_port(), []
    for i in range(2):
        env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
                   MMJAX_FAULT="restore@4:damaged" if i == 0 else "")
        procs.append(subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "tests", "train", "_agreement_child.py"), f"127.0.0.1:{port}",
             str(i), str(tmp_path / "checkpoints")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT))
    try:
        outs = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    lines = [out.strip().splitlines()[-1] for out, _ in outs]
    assert lines == ["restored 2 w=2.0 v=[2.0, 3.0]", "restored 2 w=2.0 v=[4.0, 5.0]"], lines
    assert len(os.listdir(tmp_path / "checkpoints_corrupt")) == 1  # moved once, by process 0
    assert "checkpoint 4 in " in outs[0][0] and "moved to" in outs[0][0]
    # Each process hashed the half of v it holds; process 0 wrote both, as crc32 of those bytes.
    with open(tmp_path / "checkpoints" / "2" / "checksums" / "metadata") as f:
        record = json.load(f)["arrays"]
    v = np.arange(4, dtype=np.float32) + 2
    assert record["v"]["shards"] == [[[[0, 2]], zlib.crc32(v[:2].tobytes())], [[[2, 4]], zlib.crc32(v[2:].tobytes())]]
    assert record["w"]["shards"] == [[[[0, 3]], zlib.crc32(np.full(3, 2, np.float32).tobytes())]]
