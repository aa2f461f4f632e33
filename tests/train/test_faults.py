"""The MMJAX_FAULT wrappers: unchanged callables when no fault names the point, the right step otherwise."""
import numpy as np

from mmjax.train import faults


def batches(n):
    return [{"inputs": {"a": np.zeros((2, 3), np.int32), "b": np.ones((2, 2), np.float32)}, "label": np.arange(2)}
            for _ in range(n)]


def test_unarmed_points_give_back_what_they_were_given(monkeypatch):
    monkeypatch.setattr(faults, "FAULTS", {("restore", 3): "damaged"})
    fn, it = (lambda step: step), iter(batches(2))
    assert faults.after_each_call(fn, "after_step", 0) is fn
    assert faults.before(fn, "during_eval") is fn and faults.after(fn, "after_save") is fn
    assert faults.poison_batches(it, 0) is it


def test_poison_batches_poisons_the_named_step_only(monkeypatch):
    monkeypatch.setattr(faults, "FAULTS", {("batch", 7): "nan"})
    out = list(faults.poison_batches(iter(batches(3)), start=5))  # steps 6, 7, 8
    assert [bool(np.isnan(b["inputs"]["b"]).all()) for b in out] == [False, True, False]
    assert all(b["inputs"]["a"].dtype == np.int32 and not b["inputs"]["a"].any() for b in out)  # ints untouched


def test_wrappers_report_the_step(monkeypatch):
    seen = []
    monkeypatch.setattr(faults, "FAULTS", {("after_step", None): "sleep", ("after_save", 4): "x"})
    monkeypatch.setattr(faults, "fault", lambda point, step=None: seen.append((point, step)))
    step_fn = faults.after_each_call(lambda state: state + 1, "after_step", start=10)
    assert [step_fn(s) for s in (0, 1)] == [1, 2]
    assert faults.after(lambda step, x: x, "after_save")(4, "saved") == "saved"
    assert seen == [("after_step", 11), ("after_step", 12), ("after_save", 4)]
