"""User mistakes through the command line: exit code 2 and one line 'error: ...', never a traceback.

One child process (4 CPU devices) runs ``experiments.__main__.main`` once per
case with stderr captured, so JAX starts once; one more runs
``python -m experiments`` itself.
"""
import json
import os
import subprocess
import sys

import pytest

from tests.reliability.conftest import ROOT, child_env

DRIVER = r'''
import contextlib, io, json, sys, traceback
import experiments.__main__ as m
m.COMMANDS["broken"] = "no_such_command_module"
out = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = m.main(argv)
        except SystemExit as e:
            rc = e.code
        except BaseException:
            traceback.print_exc()
            rc = "raised"
    out.append([rc, err.getvalue()])
print("RESULT " + json.dumps(out))
'''


def test_user_mistakes_exit_2_with_one_line(tmp_path, cache_dir):
    wd = str(tmp_path / "wd")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    base = ["train", "synthetic", "--workdir", wd, "--config.total_steps=2", "--config.batch_size=8"]
    bad_dir = bytes(tmp_path) + b"/w\xff"
    cases = {
        "unknown config key": (base + ["--config.optim.lerning_rate=0.1"], "optim.learning_rate"),
        "unknown encoder": (base + ["--config.model.encoders={'a': {'name': 'mpl'}, 'b': {'name': 'mlp'}}"],
                            "unknown encoder 'mpl'. Did you mean 'mlp'?"),
        "unknown fusion": (base + ["--config.model.fusion=concatt"], "Did you mean 'concat'?"),
        "impossible mesh": (base + ["--config.parallel.mode=sharded", "--config.parallel.mesh={'data': 3}"],
                            "needs 3 devices, but 4 are available"),
        "tensor across slices": (base + ["--config.parallel.mode=sharded", "--config.parallel.dcn_mesh.tensor=2"],
                                 "parallel.dcn_mesh.tensor must be 1"),
        "batch vs devices": (["train", "synthetic", "--workdir", wd, "--config.batch_size=6",
                              "--config.parallel.mode=sharded"], "batch_size 6 is not divisible by the 4"),
        "workdir is a file": (["train", "synthetic", "--workdir", str(a_file)], "is a file, not a directory"),
        "bad check_finite": (base + ["--config.train.check_finite=sometimes"], "train.check_finite must be"),
        "data lacks a modality": (base + ["--config.data.dims={'a': 6, 'c': 4}"],
                                  "missing modality 'b' (expected ['a', 'b'], got ['a', 'c'])"),
        "negative width": (base + ["--config.model.fusion_config.out_dim=-1"],
                           "model.fusion_config.out_dim must be >= 1, got -1 (fusion block 'concat')"),
        "bad optimizer": (base + ["--config.optim.name=adamw2"], "optim.name must be 'adamw' or 'sgd'"),
        "bad attention option": (base + ["--config.model.fusion=cross_attention",
                                          "--config.model.fusion_config={'out_dim': 4, 'readout': 'first'}"],
                                 "error: cross_attention: readout must be one of ('mean', 'pooled_token')"),
        "negative learning rate": (base + ["--config.optim.learning_rate=-1"], "optim.learning_rate must be > 0"),
        "dropout above 1": (base + ["--config.model.dropout_rate=1.5"], "model.dropout_rate must be in [0, 1)"),
        "eval of a missing workdir": (["eval", "synthetic", "--workdir", str(tmp_path / "nope")],
                                      f"no checkpoints in {tmp_path / 'nope'}"),
        "unavailable command": (["broken"], "command 'broken' is unavailable"),
        "total_steps None": (base + ["--config.total_steps=None"], "total_steps must be a whole number >= 1, got None"),
        # A byte that is not UTF-8 (as Python's argv holds it): tensorstore cannot write checkpoints there.
        "non-UTF-8 workdir": (["train", "synthetic", "--workdir", os.fsdecode(bad_dir)],
                              f"--workdir {bad_dir!r} is not valid UTF-8 (byte 0xff at position {len(bytes(tmp_path)) + 2})"),
    }
    p = subprocess.run([sys.executable, "-c", DRIVER, json.dumps([c[0] for c in cases.values()])],
                       capture_output=True, text=True, env=child_env(cache_dir, devices=4), cwd=ROOT, timeout=300)
    lines = [l for l in p.stdout.splitlines() if l.startswith("RESULT ")]
    assert lines, p.stdout[-3000:] + p.stderr[-3000:]
    results = json.loads(lines[-1][len("RESULT "):])
    for (what, (argv, expected)), (rc, err) in zip(cases.items(), results):
        msg = [l for l in err.strip().splitlines() if not l.startswith("WARNING")]
        assert rc == 2 and "Traceback" not in err, f"{what}: rc={rc}\n{err}"
        assert len(msg) == 1 and msg[0].startswith("error: "), f"{what}: {err}"
        assert expected in msg[0], f"{what}: {msg[0]}"
    assert len(results) == len(cases)
    assert not os.path.exists(tmp_path / "nope")  # a mistyped eval workdir is not created
    assert not os.path.exists(bad_dir)


def test_python_m_experiments_reports_in_one_line(tmp_path, cache_dir):
    a_file = tmp_path / "f"
    a_file.write_text("x")
    p = subprocess.run([sys.executable, "-m", "experiments", "train", "synthetic", "--workdir", str(a_file)],
                       capture_output=True, text=True, env=child_env(cache_dir), cwd=ROOT, timeout=300)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [f"error: --workdir {a_file} is a file, not a directory"]
