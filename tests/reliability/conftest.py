"""Helpers for the reliability tests: CLI runs in real subprocesses and one shared reference run.

Every child shares a persistent JAX compilation cache (one per test session),
so only the first run of a given program pays for XLA compilation.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The tiny synthetic run every scenario uses: 6 steps, checkpoints at 2/4/6, evals at 3 and 6.
RUN_ARGS = (
    "--config.total_steps=6", "--config.batch_size=8", "--config.log_every=1", "--config.eval_every=3",
    "--config.checkpoint_every=2", "--config.data.eval_examples=16", "--config.tensorboard=false",
    "--config.parallel.mode=single",
)
# Wall-clock keys of metrics.jsonl, which legitimately differ between runs.
TIMING_KEYS = ("steps_per_sec", "examples_per_sec", "eta_sec")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("jax_cache"))


def child_env(cache_dir, devices=1, **extra):
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=cache_dir,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} --xla_cpu_multi_thread_eigen=false "
                         "--xla_backend_optimization_level=1")
    env.pop("MMJAX_FAULT", None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def train_cmd(workdir, *extra):
    return [sys.executable, "-m", "experiments", "train", "synthetic", "--workdir", str(workdir), *RUN_ARGS, *extra]


def run(cmd, env, timeout=300):
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)


class Child:
    """A training process started in the background, with a fault marker file to wait on."""

    def __init__(self, cmd, env, marker):
        self.marker = str(marker)
        if os.path.exists(self.marker):
            os.remove(self.marker)
        env = dict(env, MMJAX_FAULT_MARKER=self.marker)
        self.out = open(self.marker + ".out", "w+")
        self.proc = subprocess.Popen(cmd, stdout=self.out, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)

    def wait_marker(self, timeout=300):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if os.path.exists(self.marker):
                with open(self.marker) as f:
                    return f.read()
            if self.proc.poll() is not None:
                raise AssertionError(f"child exited ({self.proc.returncode}) before its fault point:\n{self.output()}")
            time.sleep(0.05)
        self.kill()
        raise AssertionError(f"child never reached its fault point:\n{self.output()}")

    def kill(self, sig=signal.SIGKILL):
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=300)

    def output(self):
        self.out.flush()
        self.out.seek(0)
        return self.out.read()


def read_metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def read_results(workdir):
    with open(os.path.join(workdir, "results.json")) as f:
        return json.load(f)


def steps(workdir):
    return sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())


@pytest.fixture(scope="session")
def reference(tmp_path_factory, cache_dir):
    """One uninterrupted run: (workdir, metrics records without timings, results.json)."""
    wd = str(tmp_path_factory.mktemp("reference") / "run")
    p = run(train_cmd(wd), child_env(cache_dir))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return wd, read_metrics(wd), read_results(wd)
