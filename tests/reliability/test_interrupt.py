"""Ctrl-C on a training run saves a checkpoint at the step boundary, as SIGTERM does, and the run resumes."""
import signal

from tests.reliability.conftest import Child, child_env, read_metrics, run, steps, train_cmd


def test_ctrl_c_saves_then_the_same_command_resumes(tmp_path, reference, cache_dir):
    _, ref_metrics, _ = reference
    wd = str(tmp_path / "run")
    env = child_env(cache_dir)
    c = Child(train_cmd(wd), dict(env, MMJAX_FAULT="after_step@5:sleep"), tmp_path / "m")
    c.wait_marker()
    assert c.kill(signal.SIGINT) == 0, c.output()
    out = c.output()
    assert "interrupted: saving a checkpoint" in out and "preempted (SIGINT): saved checkpoint 5" in out, out
    assert 5 in steps(wd)
    p = run(train_cmd(wd), env)
    assert p.returncode == 0 and "at step 5" in p.stdout, p.stdout + p.stderr
    got = read_metrics(wd)
    for g, r in zip(got, ref_metrics):
        assert g == r, (g, r)
    assert len(got) == len(ref_metrics)  # the interrupted run continued exactly
