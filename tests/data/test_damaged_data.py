"""A damaged or missing ArrayRecord shard ends in a one-line error naming it, within seconds: never a hang."""
import os
import shutil
import subprocess
import sys

import pytest

SHARD = os.path.join("av_digits", "tiny", "1.0.0", "av_digits-train.array_record-00000-of-00001")
READ = """
import sys
from mmjax.data import DataError, default_config, make_iterator
for data_dir in sys.argv[1:]:
    cfg = default_config("av_digits/tiny")
    cfg.data_dir = data_dir
    try:
        it = make_iterator(cfg, "train", global_batch_size=16, seed=0, train=True, process_index=0, process_count=1)
        for _ in range(8):
            next(it)
        print("no error:", data_dir)
    except DataError as e:
        print("DataError:", e)
"""


def _truncate(path):
    os.truncate(path, 40_000)


def _flip(path):
    with open(path, "r+b") as f:
        for offset in (1_000, 30_000, 60_000):
            f.seek(offset)
            byte = f.read(1)
            f.seek(offset)
            f.write(bytes([byte[0] ^ 0xFF]))


DAMAGES = [(_truncate, "at least 64KB"), (_flip, "hash mismatch"), (os.remove, "No such file")]


def test_damaged_shard_is_a_one_line_error(tiny_dir, tmp_path):
    dirs = []
    for i, (damage, _) in enumerate(DAMAGES):
        dirs.append(str(tmp_path / f"tfds{i}"))
        shutil.copytree(tiny_dir, dirs[-1])
        damage(os.path.join(dirs[-1], SHARD))
    # One subprocess with a hard timeout: a hang fails this test, not the suite.
    out = subprocess.run([sys.executable, "-c", READ, *dirs], capture_output=True, text=True, timeout=180)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith(("DataError:", "no error:"))]
    assert out.returncode == 0 and len(lines) == 3, out.stdout[-2000:] + out.stderr[-2000:]
    for line, data_dir, (_, says) in zip(lines, dirs, DAMAGES):
        assert line.startswith("DataError:") and "split 'train'" in line and says in line, line
        assert os.path.join(data_dir, os.path.dirname(SHARD)) in line


def test_damaged_dataset_info_is_not_an_unknown_dataset(tiny_dir, tmp_path):
    from mmjax.data import DataConfigError, dataset_info, default_config

    data_dir = str(tmp_path / "tfds")
    shutil.copytree(tiny_dir, data_dir)
    with open(os.path.join(data_dir, "av_digits", "tiny", "1.0.0", "dataset_info.json"), "w") as f:
        f.write("{bad json")
    cfg = default_config("av_digits/tiny")
    cfg.data_dir = data_dir
    with pytest.raises(DataConfigError, match=r"prepared files are damaged .* move .*av_digits/tiny away"):
        dataset_info(cfg)
