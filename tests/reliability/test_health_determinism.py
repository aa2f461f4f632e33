"""NaN/Inf through the CLI (stop and skip), and run-to-run / device-count determinism.

The fault ``batch@4:nan`` fills a modality of step 4's batch with NaN after
host validation could see it (``train.check_finite=off``) or before (default).
"""
import json
import os

import numpy as np
import pytest

from tests.reliability.conftest import child_env, read_metrics, read_results, run, steps, train_cmd

pytestmark = pytest.mark.slow
# 1 vs 4 devices: same global batch and math, only the order of reductions differs.
DEVICE_RTOL = 1e-5


def test_nan_stop_keeps_last_good_checkpoint(tmp_path, reference, cache_dir):
    _, ref_metrics, _ = reference
    wd = str(tmp_path / "run")
    p = run(train_cmd(wd, "--config.train.nan_policy=stop", "--config.train.check_finite=off"),
            child_env(cache_dir, MMJAX_FAULT="batch@4:nan"))
    assert p.returncode == 2, p.stdout[-2000:] + p.stderr[-2000:]
    err = [l for l in p.stderr.splitlines() if not l.startswith(("MMJAX_FAULT", "WARNING"))]
    assert len(err) == 1 and "Traceback" not in p.stderr, p.stderr
    assert err[0].startswith("error: loss or gradient norm is not finite at step 4"), err
    assert "last good checkpoint is step 2" in err[0]
    assert steps(wd) == [2]
    got = read_metrics(wd)
    assert got == [r for r in ref_metrics if r["step"] <= 3]  # train 1-3 and the eval at 3


def test_nan_input_skip_policy_warns_and_finishes(tmp_path, reference, cache_dir):
    _, ref_metrics, _ = reference
    wd = str(tmp_path / "run")
    # The per-batch host scan (train.check_finite="every"; the default checks the first batch only)
    # names the bad batch; the device-side count skips its update either way.
    p = run(train_cmd(wd, "--config.train.check_finite=every"), child_env(cache_dir, MMJAX_FAULT="batch@4:nan"))
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    warn = [l for l in p.stdout.splitlines() if l.startswith("warning: train batch at step 4")]
    assert warn and "NaN/Inf" in warn[0] and "['a']" in warn[0] and "skipped" in warn[0], p.stdout
    got = read_metrics(wd)
    train = [r for r in got if "loss" in r]
    assert train[:3] == [r for r in ref_metrics if "loss" in r][:3]
    assert [r["skipped_nonfinite"] for r in train] == [0, 0, 0, 1, 1, 1]
    assert train[3]["loss"] == "nan" and all("grad_norm" in r for r in train)
    assert all(np.isfinite(float(r["loss"])) for r in train[4:])
    assert read_results(wd)["step"] == 6


def test_same_seed_is_bitwise_identical_and_device_count_agrees(tmp_path, reference, cache_dir):
    _, ref_metrics, ref_results = reference
    wd = str(tmp_path / "again")
    p = run(train_cmd(wd), child_env(cache_dir))
    assert p.returncode == 0, p.stderr[-2000:]
    assert read_metrics(wd) == ref_metrics  # exact float equality, every key and step
    assert read_results(wd) == ref_results

    wd4 = str(tmp_path / "four")
    p = run(train_cmd(wd4, "--config.parallel.mode=sharded"), child_env(cache_dir, devices=4))
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    four = read_metrics(wd4)
    assert [r["step"] for r in four] == [r["step"] for r in ref_metrics]
    for a, b in zip(four, ref_metrics):
        for k in ("loss", "grad_norm", "accuracy", "eval_loss", "eval_accuracy"):
            if k in b:
                np.testing.assert_allclose(a[k], b[k], rtol=DEVICE_RTOL, atol=1e-6, err_msg=f"{k} @ {b['step']}")
