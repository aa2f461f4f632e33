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


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_train")
    doc = tt.run(str(out), tiny=True, input_pipeline=False, modes=("single", "sharded"), log=None)
    return out, doc


def test_run_writes_well_formed_json_and_markdown(tiny_run):
    import json

    out, doc = tiny_run
    with open(out / "train.json") as f:
        loaded = json.load(f)
    assert loaded["benchmark"] == "train" and loaded["tiny"] is True
    assert "random arrays" in loaded["note"]
    assert loaded["input_pipeline"] == {"skipped": "disabled by the caller"}
    assert loaded["errors"] == [], loaded["errors"]
    rows = {r["mode"]: r for r in loaded["results"]}
    assert set(rows) == {"single", "sharded"}
    for r in rows.values():
        assert r["config"] == "tiny_mlp_concat" and r["batch_size"] == 4
        for key in ("compile_s", "step_s", "examples_per_s", "e2e_examples_per_s"):
            assert r[key] > 0
        assert r["examples_per_s"] == pytest.approx(4 / r["step_s"])
        if r["mfu"] is not None:
            assert r["mfu"] == pytest.approx(r["model_flops_per_step"] / r["step_s"] / r["peak_flops_per_s"])
    # Params of the tiny model: two Dense(6->8), (5->8) encoders, concat -> Dense(16->8) fusion,
    # Dense(8->3) head (each with a bias).
    assert rows["single"]["params"] == (6 * 8 + 8) + (5 * 8 + 8) + (16 * 8 + 8) + (8 * 3 + 3)
    assert rows["single"]["devices"] == 1
    if jax.device_count() == 1 and jax.devices()[0].platform == "cpu":
        assert rows["sharded"]["devices"] == 2 and "FAKE CPU devices" in loaded["multi_device"]
    md = (out / "train.md").read_text()
    assert "| tiny_mlp_concat | single | 1 | 4 |" in md and "skipped: disabled by the caller" in md


def test_xla_flops_of_train_step_are_plausible(tiny_run):
    # A train step costs at least forward + backward of the dense layers: 3 x 2 x B x (weights).
    _, doc = tiny_run
    r = next(r for r in doc["results"] if r["mode"] == "single")
    if r["model_flops_per_step"] is None:
        pytest.skip("this backend reports no cost analysis")
    weights = 6 * 8 + 5 * 8 + 16 * 8 + 8 * 3
    assert r["model_flops_per_step"] >= 3 * 2 * 4 * weights


def test_unknown_mode_is_a_clear_error(tmp_path):
    from benchmarks.common import BenchmarkConfigError

    with pytest.raises(BenchmarkConfigError, match="unknown modes.*'dp'"):
        tt.run(str(tmp_path), tiny=True, modes=("dp",), log=None)


def test_bfloat16_tiny_run_and_bad_arguments(tmp_path):
    from benchmarks.common import BenchmarkConfigError

    doc = tt.run(str(tmp_path), tiny=True, input_pipeline=False, modes=("single",), dtype="bfloat16", log=None)
    assert doc["dtype"] == "bfloat16" and doc["peak"]["dtype"] == "bfloat16"
    assert doc["errors"] == [] and doc["results"][0]["examples_per_s"] > 0
    assert np.isfinite(doc["results"][0]["loss_after_steps"])
    assert "Compute dtype bfloat16" in (tmp_path / "train.md").read_text()
    with pytest.raises(BenchmarkConfigError, match="dtype must be one of"):
        tt.run(str(tmp_path), tiny=True, modes=("single",), dtype="float16", log=None)
    with pytest.raises(BenchmarkConfigError, match="batch size must be >= 1"):
        tt.run(str(tmp_path), tiny=True, modes=("single",), batch_size=0, log=None)
