"""Kill -9, SIGTERM, a second run, a damaged checkpoint and a changed model, in one scripted scenario on one workdir.

Every interrupted run is resumed by running the same command again; at the
end, metrics.jsonl and results.json must equal those of an uninterrupted run
exactly (bitwise on CPU), step by step.
"""
import os
import signal

import pytest

from tests.reliability.conftest import Child, child_env, read_metrics, read_results, run, steps, train_cmd

pytestmark = pytest.mark.slow


def _corrupt(step_dir):
    """Truncates every file of a finalised checkpoint to half its size (a torn copy)."""
    n = 0
    for root, _, files in os.walk(step_dir):
        for name in files:
            path = os.path.join(root, name)
            size = os.path.getsize(path)
            if size:
                with open(path, "r+b") as f:
                    f.truncate(size // 2)
                n += 1
    assert n


def test_crash_preempt_lock_corruption_then_identical_results(tmp_path, reference, cache_dir):
    ref_dir, ref_metrics, ref_results = reference
    wd = str(tmp_path / "run")
    env = child_env(cache_dir)
    log = []

    # 1. kill -9 between steps (after step 3, checkpoint 2 exists); meanwhile a second run must refuse.
    a = Child(train_cmd(wd), dict(env, MMJAX_FAULT="after_step@3:sleep"), tmp_path / "m1")
    a.wait_marker()
    second = run(train_cmd(wd), env)
    assert second.returncode == 2, second.stdout + second.stderr
    err = second.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: workdir") and "in use by pid" in err[0], second.stderr
    assert f"pid {a.proc.pid}" in err[0] and "Traceback" not in second.stderr
    log.append(err[0])
    assert a.kill() == -signal.SIGKILL
    assert steps(wd) == [2]
    assert os.path.exists(os.path.join(wd, "run.lock"))  # left behind by the killed run

    # 2. kill -9 inside a save: checkpoint 4 fully written but not committed (renamed) yet.
    b = Child(train_cmd(wd), dict(env, MMJAX_FAULT="before_commit@4:sleep"), tmp_path / "m2")
    b.wait_marker()
    tmp_dirs = [d for d in os.listdir(os.path.join(wd, "checkpoints")) if d.startswith("4.")]
    assert tmp_dirs, os.listdir(os.path.join(wd, "checkpoints"))
    b.kill()
    out = b.output()
    assert "removing stale lock" in out and "resumed from" in out and "at step 2" in out, out
    log.append(next(l for l in out.splitlines() if "stale lock" in l))
    assert steps(wd) == [2]  # the uncommitted step is not a checkpoint

    # 3. SIGTERM (preemption) after step 5: a checkpoint at 5, then a clean exit.
    c = Child(train_cmd(wd), dict(env, MMJAX_FAULT="after_step@5:sleep"), tmp_path / "m3")
    c.wait_marker()
    assert c.kill(signal.SIGTERM) == 0, c.output()
    out = c.output()
    assert "preempted (SIGTERM): saved checkpoint 5" in out, out
    log.append(next(l for l in out.splitlines() if l.startswith("preempted")))
    assert steps(wd) == [4, 5]
    assert not os.path.exists(os.path.join(wd, "run.lock"))  # released on a clean exit

    # 4. kill -9 during the final evaluation: step 6 is already saved (before its eval).
    d = Child(train_cmd(wd), dict(env, MMJAX_FAULT="during_eval@6:sleep"), tmp_path / "m4")
    d.wait_marker()
    d.kill()
    assert "at step 5" in d.output()
    assert steps(wd) == [5, 6] and not os.path.exists(os.path.join(wd, "results.json"))

    # 5. The latest checkpoint (6) is damaged on disk: reported, set aside, 5 is used.
    _corrupt(os.path.join(wd, "checkpoints", "6"))
    p = run(train_cmd(wd), env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    bad = [l for l in p.stdout.splitlines() if "unreadable" in l]
    assert bad and bad[0].startswith("checkpoint 6 in ") and "trying an older one" in bad[0], p.stdout
    log.append(bad[0])
    assert "at step 5" in p.stdout
    assert os.listdir(os.path.join(wd, "checkpoints_corrupt"))
    assert steps(wd) == [5, 6]

    # The result is the uninterrupted run's, exactly.
    got = read_metrics(wd)
    assert [r["step"] for r in got] == [r["step"] for r in ref_metrics]
    for g, r in zip(got, ref_metrics):
        assert g == r, (g, r)
    assert read_results(wd) == ref_results

    # 6. The same workdir with another model: named, refused, nothing moved or overwritten.
    corrupt = sorted(os.listdir(os.path.join(wd, "checkpoints_corrupt")))
    p = run(train_cmd(wd, "--config.model.fusion=gated"), env)
    err = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(err) == 1 and "Traceback" not in p.stderr, p.stdout[-2000:] + p.stderr
    assert err[0].startswith("error: checkpoint 6 in ") and "model.fusion: 'concat' -> 'gated'" in err[0], err[0]
    assert "params/fusion/gate/kernel" in err[0] and "--config.init_from.source=encoder_a_0,encoder_b_0" in err[0]
    log.append(err[0][:200])
    assert steps(wd) == [5, 6] and sorted(os.listdir(os.path.join(wd, "checkpoints_corrupt"))) == corrupt
    assert read_results(wd) == ref_results
    print("\n".join(log))
