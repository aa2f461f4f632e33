"""Dataset mistakes through ``train`` and ``data info``: exit 2 and one ``error:`` line, never a traceback.

One child process runs ``experiments.__main__.main`` once per case (as
``tests/reliability/test_cli_errors.py`` does), on copies of the session's av_digits/tiny.
"""
import json
import os
import shutil
import subprocess
import sys

from tests.reliability.test_cli_errors import DRIVER

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VERSION = os.path.join("av_digits", "tiny", "1.0.0")


def test_dataset_mistakes_are_one_line(tiny_dir, tmp_path):
    damaged, half = str(tmp_path / "damaged"), str(tmp_path / "half")
    shutil.copytree(tiny_dir, damaged)
    with open(os.path.join(damaged, VERSION, "dataset_info.json"), "w") as f:
        f.write("{bad json")
    # A build stopped after its folder and dataset_info.json, before any split was recorded.
    shutil.copytree(tiny_dir, half)
    info_path = os.path.join(half, VERSION, "dataset_info.json")
    with open(info_path) as f:
        info = json.load(f)
    info["splits"] = []
    with open(info_path, "w") as f:
        json.dump(info, f)
    for name in os.listdir(os.path.join(half, VERSION)):
        if ".array_record" in name:
            os.remove(os.path.join(half, VERSION, name))

    def train(*extra):
        return ["train", "av_digits", "--workdir", str(tmp_path / "wd"), "--config.data.name=av_digits/tiny",
                "--config.total_steps=2", "--config.batch_size=8", f"--config.data.data_dir={tiny_dir}", *extra]
    cases = {
        "unknown dataset": (train("--config.data.name=no_such_set"), "unknown tfds dataset 'no_such_set'"),
        "bad data option": (train("--config.data.bad_examples=sometimes"),
                            "data config: bad_examples must be 'missing', 'skip' or 'fatal', got 'sometimes'"),
        "damaged dataset_info.json": (train(f"--config.data.data_dir={damaged}"),
                                      f"dataset 'av_digits/tiny' in {damaged}: its prepared files are damaged"),
        "half-built dataset, train": (train(f"--config.data.data_dir={half}"),
                                      f"dataset 'av_digits/tiny' in {half}/{VERSION} has no splits: its build did "
                                      "not finish"),
        "half-built dataset, data info": (["data", "info", "av_digits/tiny", "--data_dir", half], "has no splits"),
    }
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    p = subprocess.run([sys.executable, "-c", DRIVER, json.dumps([c[0] for c in cases.values()])],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    lines = [l for l in p.stdout.splitlines() if l.startswith("RESULT ")]
    assert lines, p.stdout[-3000:] + p.stderr[-3000:]
    results = json.loads(lines[-1][len("RESULT "):])
    assert len(results) == len(cases)
    for (what, (_, expected)), (rc, err) in zip(cases.items(), results):
        msg = [l for l in err.strip().splitlines() if not l.startswith("WARNING")]
        assert rc == 2 and "Traceback" not in err, f"{what}: rc={rc}\n{err}"
        assert len(msg) == 1 and msg[0].startswith("error: "), f"{what}: {err}"
        assert expected in msg[0], f"{what}: {msg[0]}"
        if what == "damaged dataset_info.json":
            assert "unknown" not in msg[0] and "did you mean" not in msg[0].lower(), msg[0]
