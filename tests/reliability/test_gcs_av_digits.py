"""av_digits trained on a gs:// workdir (the local GCS emulator), killed, and resumed from the bucket.

The real dataset path: the training process reads the ArrayRecord build through
tensorflow-datasets while every run file goes to the bucket, so this checks
that reading data does not switch etils' gs:// backend to tf.io.gfile (which
cannot reach the emulator). The resumed run ends with the metrics.jsonl and
results.json of an uninterrupted local run, exactly.
"""
import json
import os
import sys
import time

import pytest

from tests.reliability.conftest import ROOT, TIMING_KEYS, Child, child_env, read_metrics, read_results, run
from tests.reliability.gcs_emulator import gcs  # noqa: F401 - fixture

LEASE_S = 3


def _cmd(workdir, data_dir, *extra):
    return [sys.executable, "-m", "experiments", "train", "av_digits", "--workdir", str(workdir),
            "--config.data.name=av_digits/tiny", f"--config.data.data_dir={data_dir}", "--config.total_steps=4",
            "--config.batch_size=8", "--config.log_every=1", "--config.checkpoint_every=2", "--config.eval_every=0",
            "--config.tensorboard=false", "--config.parallel.mode=single", f"--config.workdir_lease_s={LEASE_S}",
            *extra]


@pytest.mark.slow
def test_av_digits_on_gs_killed_and_resumed_equals_local_run(tmp_path, tiny_dir, cache_dir, gcs):
    local = tmp_path / "local"
    p = run(_cmd(local, tiny_dir), child_env(cache_dir))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    ref_metrics, ref_results = read_metrics(str(local)), read_results(str(local))
    assert "test" in ref_results

    url, key, fs = f"gs://{gcs.bucket}/avd", f"{gcs.bucket}/avd", gcs.fs()
    env = child_env(cache_dir, **gcs.env)
    a = Child(_cmd(url, tiny_dir), dict(env, MMJAX_FAULT="after_step@3:sleep"), tmp_path / "marker")
    a.wait_marker()
    end = time.monotonic() + 120
    while not fs.exists(f"{key}/checkpoints/2/commit_success.txt"):
        assert time.monotonic() < end, "checkpoint 2 never reached the bucket"
        time.sleep(0.1)
    a.kill()
    time.sleep(LEASE_S + 1.0)  # the killed run's lease goes stale

    p = run(_cmd(url, tiny_dir), env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert f"resumed from {url}/checkpoints at step 2" in p.stdout, p.stdout[-3000:]
    assert not os.path.exists(os.path.join(ROOT, "gs:")), "a local 'gs:' folder was created"
    got = [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS}
           for line in fs.cat_file(f"{key}/metrics.jsonl").decode().splitlines()]
    assert got == ref_metrics
    assert json.loads(fs.cat_file(f"{key}/results.json")) == ref_results
    assert json.loads(fs.cat_file(f"{key}/config.json"))["config"]["data"]["name"] == "av_digits/tiny"
