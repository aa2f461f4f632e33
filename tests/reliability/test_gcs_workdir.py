"""gs:// workdirs against a real local GCS server (gcp-storage-emulator, started by the ``gcs`` fixture).

* A run on ``gs://bucket/run`` killed with ``kill -9`` after checkpoint 4 is
  resumed from the bucket (taking over the dead run's lease) and ends with
  the metrics.jsonl and results.json of an uninterrupted local run, exactly;
  ``eval`` then reads the bucket's checkpoints and writes its report there.
* The lease: a live holder refuses a second run, a killed holder's lease is
  taken over after its ttl, two starters at once get one winner, and a
  holder whose lease was taken over finds out at its next renewal.
"""
import json
import os
import subprocess
import sys
import threading
import time

import pytest

from tests.reliability.conftest import ROOT, RUN_ARGS, TIMING_KEYS, Child, child_env, run, train_cmd
from tests.reliability.gcs_emulator import gcs, gcs_env  # noqa: F401 - fixtures

LEASE_S = 3  # the gs:// run's workdir_lease_s: how long a killed run's lease blocks the workdir


def _records(text):
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in text.splitlines()]


def _wait_for(predicate, what, timeout=120):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_gs_workdir_kill_resume_equals_local_run_then_eval(tmp_path, reference, cache_dir, gcs):
    _, ref_metrics, ref_results = reference
    url = f"gs://{gcs.bucket}/run"
    key = f"{gcs.bucket}/run"
    fs = gcs.fs()
    env = child_env(cache_dir, **gcs.env)
    cmd = train_cmd(url, "--config.tensorboard=true", f"--config.workdir_lease_s={LEASE_S}")

    # 1. kill -9 at step 5: checkpoint 4 (saved in the background) is committed in the bucket first.
    a = Child(cmd, dict(env, MMJAX_FAULT="after_step@5:sleep"), tmp_path / "m1")
    a.wait_marker()
    _wait_for(lambda: fs.exists(f"{key}/checkpoints/4/commit_success.txt"), "checkpoint 4 in the bucket")
    busy = run(cmd, env)  # the live run holds the lease
    err = busy.stderr.strip().splitlines()
    assert busy.returncode == 2 and len(err) == 1 and f"in use by pid {a.proc.pid}" in err[0], busy.stderr[-2000:]
    log = [err[0]]
    a.kill()
    claims = fs.ls(f"{key}/run.lease", detail=False, refresh=True)
    assert len(claims) == 1, claims  # kill -9 leaves the lease behind
    renewed = json.loads(fs.cat_file(claims[0]))["renewed"]
    time.sleep(max(0.0, renewed + LEASE_S + 0.5 - time.time()))

    # 2. Resume from the bucket: the stale lease is taken over, training continues at step 4.
    p = run(cmd, env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "taking over the stale lease" in p.stdout and f"resumed from {url}/checkpoints at step 4" in p.stdout, \
        p.stdout[-3000:]
    assert not os.path.exists(os.path.join(ROOT, "gs:")), "a local 'gs:' folder was created"
    log += [line for line in p.stdout.splitlines() if "stale lease" in line or line.startswith("resumed from")]
    got = _records(fs.cat_file(f"{key}/metrics.jsonl").decode())
    assert [r["step"] for r in got] == [r["step"] for r in ref_metrics]
    for g, r in zip(got, ref_metrics):
        assert g == r, (g, r)
    assert json.loads(fs.cat_file(f"{key}/results.json")) == ref_results
    events = [f for f in fs.ls(f"{key}/tensorboard", detail=True) if "tfevents" in f["name"]]
    assert len(events) == 2 and all(f["size"] > 0 for f in events), events  # one event file per run
    fs.invalidate_cache()
    assert fs.find(f"{key}/run.lease") == []  # released at the end of the run

    # 3. Evaluate the bucket's latest checkpoint; the report (and plots) go to gs://bucket/run/eval/.
    p = run([sys.executable, "-m", "experiments", "eval", "synthetic", "--workdir", url, "--latest",
             "--split", "validation", *RUN_ARGS],
            env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    report = json.loads(fs.cat_file(f"{key}/eval/metrics.json"))
    assert report["step"] == 6 and report["accuracy"] == ref_results["accuracy"], (report["accuracy"], ref_results)
    assert {"confusion_matrix.png", "roc.png", "robustness.png"} <= {
        os.path.basename(f) for f in fs.ls(f"{key}/eval", detail=False)}
    print("\n".join(log))


def _hold_lease_then_die(url, env):
    """A process that takes the lease (1 s ttl) and is then killed with SIGKILL; -> its pid."""
    code = ("import sys, time\nfrom mmjax.train.lease import WorkdirLease\n"
            f"WorkdirLease({url!r}, ttl_s=1.0).acquire()\nprint('held', flush=True)\ntime.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", **env), cwd=ROOT)
    try:
        assert proc.stdout.readline().strip() == "held"
    finally:
        proc.kill()
        proc.wait(timeout=60)
        proc.stdout.close()
    return proc.pid


def test_lease_busy_stale_takeover_race_and_lost(gcs_env):
    from mmjax.train.health import WorkdirBusyError
    from mmjax.train.lease import WorkdirLease

    url = f"gs://{gcs_env.bucket}/lease"
    pid = _hold_lease_then_die(url, gcs_env.env)
    said = []
    with pytest.raises(WorkdirBusyError, match=f"in use by pid {pid}"):
        WorkdirLease(url, ttl_s=1.0).acquire()  # renewed well under 1 s before the kill
    time.sleep(1.3)
    b = WorkdirLease(url, ttl_s=1.0, say=said.append).acquire()
    assert len(said) == 1 and said[0].startswith("taking over the stale lease") and f"pid {pid}" in said[0], said
    time.sleep(1.3)  # b's thread renews it: still busy after the ttl
    with pytest.raises(WorkdirBusyError, match=f"in use by pid {os.getpid()}"):
        WorkdirLease(url, ttl_s=1.0).acquire()

    # b hangs (its renewals stop) past its ttl; c takes over; b learns it at its next renewal.
    b._stop.set()
    b._thread.join()
    time.sleep(1.3)
    c = WorkdirLease(url, ttl_s=1.0, say=said.append).acquire()
    b.renew()
    with pytest.raises(WorkdirBusyError, match="was removed"):
        b.check()
    b.release()  # a lost lease is not deleted: c still holds the workdir
    with pytest.raises(WorkdirBusyError):
        WorkdirLease(url, ttl_s=1.0).acquire()
    c.release()

    # A bucket that does not exist is a one-line error before anything is written.
    from mmjax.train.loop import WorkdirError, check_workdir
    with pytest.raises(WorkdirError, match="bucket gs://nobucket does not exist"):
        check_workdir("gs://nobucket/run")
    check_workdir(url)

    # Starters at the same moment: exactly one wins each time.
    for k in range(3):
        leases = [WorkdirLease(f"{url}-race{k}", ttl_s=5.0) for _ in range(3)]
        won, lost = [], []

        def start(lease):
            try:
                won.append(lease.acquire())
            except WorkdirBusyError:
                lost.append(lease)
        threads = [threading.Thread(target=start, args=(lease,)) for lease in leases]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1 and len(lost) == 2, (won, lost)
        won[0].release()
