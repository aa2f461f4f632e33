"""In-process checks of batch validation, the workdir lock, checkpoint fallback and the SIGTERM guard."""
import json
import os
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from mmjax.train.checkpoint import CheckpointMismatchError, Checkpointer, config_differences, tree_differences
from mmjax.train.health import PreemptionGuard, WorkdirBusyError, WorkdirLock
from mmjax.validation import ArraySpec, BatchSpec, BatchValidationError, spec_from_config


def _batch(b=4):
    r = np.random.RandomState(0)
    return {"inputs": {"a": r.randn(b, 6).astype(np.float32), "t": r.randint(1, 9, (b, 5)).astype(np.int32)},
            "token_mask": {"t": np.ones((b, 5), bool)}, "modality_mask": {"a": np.ones(b, bool)},
            "label": np.arange(b, dtype=np.int32) % 3, "weight": np.ones(b, np.float32)}


SPEC = BatchSpec({"a": ArraySpec((6,), "f"), "t": ArraySpec(None, "i")}, num_classes=3, batch_size=4)


def _edit(fn):
    b = _batch()
    fn(b)
    return b


@pytest.mark.parametrize("edit, message", [
    (lambda b: b["inputs"].pop("a"), "missing modality 'a'"),
    (lambda b: b["inputs"].__setitem__("aa", np.zeros((4, 6), np.float32)), "unexpected modality 'aa'"),
    (lambda b: b.__setitem__("lable", b["label"]), "unexpected keys ['lable'] (did you mean 'label'?)"),
    (lambda b: b["inputs"].__setitem__("a", np.zeros((4, 5), np.float32)),
     "batch['inputs']['a']: expected shape (B, 6) float, got (4, 5) float32"),
    (lambda b: b["inputs"].__setitem__("a", np.zeros((4, 6, 1), np.float32)), "expected shape (B, 6) float"),
    (lambda b: b["inputs"].__setitem__("a", np.zeros((4, 6), np.int32)), "expected dtype float, got int32"),
    (lambda b: b["inputs"].__setitem__("a", np.zeros((3, 6), np.float32)), "with B=4 (from 'label')"),
    (lambda b: b["inputs"]["a"].__setitem__((2, 1), np.inf), "['a']: 1 NaN/Inf values in examples [2]"),
    (lambda b: b["label"].__setitem__(1, 3), "class ids must be in [0, 3), got [3]"),
    (lambda b: b["label"].__setitem__(1, -1), "class ids must be in [0, 3), got [-1]"),
    (lambda b: b.__setitem__("label", b["label"].astype(np.float32)), "integer class ids"),
    (lambda b: b["modality_mask"].__setitem__("a", np.ones(3, bool)), "['modality_mask']['a']: expected bool shape (4,)"),
    (lambda b: b["token_mask"].__setitem__("t", np.ones((4, 4), bool)), "expected bool shape (4, 5)"),
    (lambda b: b["weight"].__setitem__(0, np.nan), "['weight']: contains NaN/Inf"),
])
def test_each_bad_batch_is_named(edit, message):
    SPEC.validate(_batch())  # the untouched batch is fine
    with pytest.raises(BatchValidationError) as e:
        SPEC.validate(_edit(edit))
    assert message in str(e.value)


def test_empty_batch_masked_garbage_and_freeze():
    empty = {"inputs": {"a": np.zeros((0, 6), np.float32), "t": np.zeros((0, 5), np.int32)},
             "label": np.zeros((0,), np.int32)}
    with pytest.raises(BatchValidationError, match="the batch is empty"):
        dict_spec = BatchSpec(SPEC.modalities, num_classes=3)
        dict_spec.validate(empty)
    b = _batch()
    b["inputs"]["a"][1] = np.nan  # example 1 has no 'a': garbage there is allowed
    b["modality_mask"]["a"][1] = False
    SPEC.validate(b)
    SPEC.validate(b, check_finite=False)
    frozen = SPEC.freeze(_batch())
    longer = _batch()
    longer["inputs"]["t"] = np.ones((4, 7), np.int32)
    longer["token_mask"]["t"] = np.ones((4, 7), bool)
    SPEC.validate(longer)  # the open spec accepts any length...
    with pytest.raises(BatchValidationError, match=r"\['t'\]: expected shape \(B, 5\) int, got \(4, 7\)"):
        frozen.validate(longer)  # ...the frozen one reports the change (it would recompile)


def test_spec_from_config_uses_dataset_dims():
    spec = spec_from_config({"encoders": {"a": {"name": "mlp"}, "b": {"name": "mlp"}}},
                            {"num_classes": 3, "dims": {"a": 6, "b": 4}}, loss="sigmoid_bce")
    assert spec.modalities["b"] == ArraySpec((4,), "f") and spec.label == "multi" and spec.num_classes == 3
    early = spec_from_config({"placement": "early", "encoders": {"a": {"name": "mlp"}}},
                             {"num_classes": 2, "modalities": ["a", "img"]})
    assert sorted(early.modalities) == ["a", "img"] and early.optional_modalities == ("img",)


def test_lock_live_dead_and_foreign_owner(tmp_path):
    lock = WorkdirLock(str(tmp_path)).acquire()
    owner = json.load(open(lock.path))
    assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
    lock.release()
    assert not os.path.exists(lock.path)

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with open(lock.path, "w") as f:
            json.dump({"pid": sleeper.pid, "host": socket.gethostname(), "started": "then"}, f)
        with pytest.raises(WorkdirBusyError, match=f"in use by pid {sleeper.pid}"):
            WorkdirLock(str(tmp_path)).acquire()
    finally:
        sleeper.kill()
        sleeper.wait()
    said = []
    WorkdirLock(str(tmp_path), say=said.append).acquire().release()  # dead pid: stale, taken over
    assert said and f"pid {sleeper.pid} is not running" in said[0]

    with open(lock.path, "w") as f:
        json.dump({"pid": 1, "host": "another-host", "started": "then"}, f)
    with pytest.raises(WorkdirBusyError, match="on host another-host"):
        WorkdirLock(str(tmp_path)).acquire()


def test_corrupt_latest_checkpoint_falls_back_and_can_be_rewritten(tmp_path):
    ck = Checkpointer(str(tmp_path / "checkpoints"), keep=2)
    for step in (1, 2):
        ck.save(step, {"w": np.full(3, step, np.float32)})
    ck.wait()
    for root, _, files in os.walk(tmp_path / "checkpoints" / "2"):
        for name in files:
            with open(os.path.join(root, name), "r+b") as f:
                f.truncate(0)
    said = []
    state, step = ck.restore_latest_good({"w": jax.ShapeDtypeStruct((3,), np.float32)}, said.append)
    assert step == 1 and np.array_equal(state["w"], np.ones(3)), said
    assert said[0].startswith("checkpoint 2 in ") and "moved to" in said[0]
    assert ck.all_steps() == [1] and os.listdir(tmp_path / "checkpoints_corrupt")
    ck.save(2, {"w": np.full(3, 5, np.float32)})  # the step number is free again
    ck.wait()
    state, step = ck.restore_latest_good({"w": jax.ShapeDtypeStruct((3,), np.float32)})
    assert step == 2 and np.array_equal(state["w"], np.full(3, 5))
    ck.close()


def test_checkpoint_of_another_model_is_named_not_set_aside(tmp_path):
    ck = Checkpointer(str(tmp_path / "checkpoints"), keep=2)
    old = {"params": {"encoder_a_0": {"kernel": np.ones((4, 3), np.float32)},
                      "fusion": {"kernel": np.ones((3, 2), np.float32)}}}
    ck.save(1, old, config={"model": {"fusion": "concat", "width": 3}, "seed": 0})
    ck.wait()
    sds = lambda *shape: jax.ShapeDtypeStruct(shape, np.float32)  # noqa: E731
    new = {"params": {"encoder_a_0": {"kernel": sds(4, 3)},
                      "fusion": {"factor_a": sds(3, 4, 2), "kernel": sds(5, 2)}}}
    config = {"model": {"fusion": "low_rank", "width": 3}, "seed": 0}
    with pytest.raises(CheckpointMismatchError) as e:
        ck.restore_latest_good(new, config=config)
    msg = str(e.value)
    assert "params/fusion/factor_a (3, 4, 2) is not in the checkpoint" in msg
    assert "params/fusion/kernel has shape (3, 2) in the checkpoint, (5, 2) in the model" in msg
    assert "model.fusion: 'concat' -> 'low_rank'" in msg and "seed" not in msg and "width" not in msg
    assert "--config.init_from.source=encoder_a_0 " in msg  # the one subtree that still fits
    assert ck.all_steps() == [1] and not os.path.exists(tmp_path / "checkpoints_corrupt")
    # Same arrays, other dtype and other config: restores (orbax casts; the config is not the model).
    state, step = ck.restore_latest_good({"params": {"encoder_a_0": {"kernel": jax.ShapeDtypeStruct((4, 3), np.float16)},
                                                     "fusion": {"kernel": sds(3, 2)}}}, config=config)
    assert step == 1 and state["params"]["encoder_a_0"]["kernel"].dtype == np.float16
    ck.close()


def test_tree_differences_lists_params_first_and_counts_the_rest():
    on_disk = {"opt_state/mu/w": (2,), "params/w": (2,), **{f"opt_state/x{i}": (1,) for i in range(8)}}
    wanted = {"opt_state/mu/w": (3,), "params/w": (3,)}
    lines = tree_differences(on_disk, wanted, limit=3)
    assert lines[0] == "params/w has shape (2,) in the checkpoint, (3,) in the model"
    assert lines[1] == "opt_state/mu/w has shape (2,) in the checkpoint, (3,) in the model"
    assert lines[-1] == "and 7 more" and len(lines) == 4
    assert tree_differences(wanted, dict(wanted)) == []
    assert config_differences({"seed": 0, "model": {"a": 1, "b": [2]}}, {"seed": 1, "model": {"a": 1, "b": [3]}}) == [
        "model.b: [2] -> [3]", "seed: 0 -> 1"]
    assert config_differences({"x": {"y": 1}}, {"x": {}}) == ["x.y: 1 -> '<unset>'"]


def test_sigterm_sets_the_flag_and_handler_is_restored():
    before = signal.getsignal(signal.SIGTERM)
    with PreemptionGuard() as guard:
        assert not guard.requested(1)
        os.kill(os.getpid(), signal.SIGTERM)
        assert guard.requested(2) and guard.signal_name == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before


def test_ctrl_c_sets_the_flag_and_a_second_one_stops_at_once():
    before = signal.getsignal(signal.SIGINT)
    with PreemptionGuard() as guard:
        os.kill(os.getpid(), signal.SIGINT)
        assert guard.requested(1) and guard.signal_name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):  # the installed handler, called as a second signal would call it
            signal.getsignal(signal.SIGINT)(signal.SIGINT, None)
    assert signal.getsignal(signal.SIGINT) is before


def test_metrics_repair_on_resume_drops_damaged_lines_and_later_records(tmp_path):
    from mmjax.train.logging import truncate_metrics as _truncate_metrics

    path = tmp_path / "metrics.jsonl"
    good = [b'{"step": 1, "loss": 2.0}', b'{"step": 2, "loss": 1.5}']
    damaged = [b'{"step": 2, "lo\xff\xfess": 1}', b"[1, 2]", b'{"step": "3"}', b'{"loss": 1}', b'{"step": 3, "lo']
    path.write_bytes(b"\n".join([good[0], damaged[0], good[1], damaged[1], damaged[2], b'{"step": 5}',
                                 damaged[3], damaged[4]]) + b"\n")
    assert _truncate_metrics(str(path), 3) == (1, len(damaged))
    assert path.read_bytes().splitlines() == good
    assert _truncate_metrics(str(path), 3) == (0, 0)  # nothing left to drop: the file is not rewritten


@pytest.mark.parametrize("content", [b'{"pid": "abc", "host": "h"}', b'{"pid": [1]}',
                                     b'{"pid": 1000000000000000000000}', b"[1, 2]", b"", b"\xff not json"])
def test_a_lock_file_of_any_content_is_read_safely(tmp_path, content):
    (tmp_path / "run.lock").write_bytes(content)
    said = []
    lock = WorkdirLock(str(tmp_path), say=said.append).acquire()
    assert lock.held and len(said) == 1 and "not a lock" in said[0]
    assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()  # written whole, in one step
    lock.release()
    assert not (tmp_path / "run.lock").exists() and not list(tmp_path.glob("run.lock.*"))
