"""Two real processes started the way ``srun`` starts them, one of them preempted by SIGTERM.

Both processes get SLURM's variables (``SLURM_NTASKS=2``, ``SLURM_PROCID``...) on
127.0.0.1 and no --coordinator / --num_processes / --process_id flags, so the
train command must detect the environment and call ``jax.distributed.initialize()``
(``JAX_COORDINATOR_PORT`` picks a free port instead of SLURM's job-id port).
Process 1 sends itself SIGTERM after step 5; the runtime's preemption notice
reaches process 0, both stop at the same ``reached_preemption_sync_point``
step, save it, and a restart of both resumes from it.
"""
import os
import re
import socket
import subprocess

import pytest

from tests.reliability.conftest import ROOT, child_env, steps, train_cmd

pytestmark = [pytest.mark.slow, pytest.mark.multidevice]
ARGS = ("--config.parallel.mode=auto", "--config.log_every=1000", "--config.eval_every=0",
        "--config.checkpoint_every=0")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _srun(workdir, cache_dir, total_steps, faults=("", ""), timeout=300, extra=()):
    """Both processes of a 2-task SLURM step on this machine -> [(returncode, stdout, stderr)]."""
    port = _free_port()
    procs = []
    for i in range(2):
        env = child_env(cache_dir, SLURM_JOB_ID=4242, SLURM_STEP_NODELIST="127.0.0.1", SLURM_NTASKS=2,
                        SLURM_PROCID=i, SLURM_LOCALID=i, JAX_COORDINATOR_PORT=port)
        if faults[i]:
            env["MMJAX_FAULT"] = faults[i]
        cmd = train_cmd(workdir, *ARGS, f"--config.total_steps={total_steps}", *extra)
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env=env, cwd=ROOT))
    try:
        results = []
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            results.append((p.returncode, out, err))
        return results
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def _saved_step(stderr):
    """The step of the ``after_save`` fault announcement (printed by each process after its save)."""
    found = re.findall(r"MMJAX_FAULT after_save@(\d+):mark", stderr)
    assert found, stderr[-3000:]
    return int(found[-1])


def test_sigterm_to_one_process_stops_both_at_the_same_step_and_both_resume(tmp_path, cache_dir):
    wd = str(tmp_path / "run")
    # A run far longer than the test: only the preemption ends it.
    first = _srun(wd, cache_dir, 100_000, faults=("after_save:mark", "after_step@5:sigterm,after_save:mark"))
    for rc, out, err in first:
        assert rc == 0, out[-3000:] + err[-3000:]
        assert "multi-process environment: SLURM (2 processes" in err, err[-3000:]
    assert "MMJAX_FAULT after_step@5:sigterm" in first[1][2]
    saved = [_saved_step(err) for _, _, err in first]
    assert saved[0] == saved[1] > 5, saved
    step = saved[0]
    assert f"preempted (preemption notice): saved checkpoint {step}" in first[0][1], first[0][1][-3000:]
    assert steps(wd) == [step]

    second = _srun(wd, cache_dir, step + 2, extra=("--allow_config_change",))  # a shorter total_steps
    for rc, out, err in second:
        assert rc == 0, out[-3000:] + err[-3000:]
    assert f"resumed from {os.path.join(wd, 'checkpoints')} at step {step}" in second[0][1], second[0][1][-3000:]
    assert steps(wd) == [step, step + 2]
