"""A full disk and read-only storage, as the kernel reports them: one ``error:`` line, nothing lost.

The scenario runs in a user and mount namespace (``unshare -rm``, no root needed where user
namespaces are enabled) on a 256 KiB tmpfs: a write there fails with the kernel's own ENOSPC,
and a read-only remount or bind mount gives EROFS (``chmod`` would not stop root). It is
skipped where ``unshare`` cannot mount. The file-layer test uses ``/dev/full`` and runs anywhere.
"""
import errno
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from mmjax.train import files
from tests.reliability.conftest import ROOT, RUN_ARGS, child_env, read_metrics, read_results

# Run in the namespace: $1 the tmpfs mount point, $2 where outputs go; ./train and ./eval
# (in $2) are the commands. Each step leaves NAME.out, NAME.err and NAME.rc in $2.
SCENARIO = r'''
set -u
T=$1; OUT=$2
step() { name=$1; shift; "$@" > "$OUT/$name.out" 2> "$OUT/$name.err"; echo $? > "$OUT/$name.rc"; }
mount -t tmpfs -o size=256k tmpfs "$T" || exit 99
step full_in_save "$OUT/train"
ls -a "$T/run/checkpoints" > "$OUT/after_full_in_save"
dd if=/dev/zero of="$T/filler" bs=4k 2>/dev/null
step full_at_start "$OUT/train"
rm "$T/filler"
mkdir "$T/data"
mount -o remount,ro "$T"
step read_only "$OUT/train"
step data_read_only "$OUT/data"
mount -o remount,rw "$T"
mount --bind "$T/run/checkpoints" "$T/run/checkpoints"
mount -o remount,bind,ro "$T/run/checkpoints"
step checkpoints_read_only "$OUT/train"
umount "$T/run/checkpoints"
mount -o remount,size=4m "$T"
step resumed "$OUT/train"
cp -r "$T/run" "$OUT/run"
# 16 KiB left: the start probe passes, the eval report does not fit
dd if=/dev/zero of="$T/filler" bs=4k count=$(( $(stat -f -c %a "$T") - 4 )) 2>/dev/null
step eval_full "$OUT/eval"
ls -a "$T/run/eval" > "$OUT/eval_files" 2>&1
cp "$T/run/eval/metrics.json" "$OUT/eval_metrics.json" 2>/dev/null
exit 0
'''


def _can_unshare() -> bool:
    if shutil.which("unshare") is None:
        return False
    p = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                       capture_output=True, timeout=30)
    return p.returncode == 0


def _one_error_line(out_dir, name):
    rc = int(open(os.path.join(out_dir, f"{name}.rc")).read())
    err = open(os.path.join(out_dir, f"{name}.err")).read()
    lines = [l for l in err.strip().splitlines() if not l.startswith("WARNING")]
    assert rc == 2 and "Traceback" not in err and len(lines) == 1, f"{name}: rc={rc}\n{err[-4000:]}"
    assert lines[0].startswith("error: "), f"{name}: {err}"
    return lines[0], open(os.path.join(out_dir, f"{name}.out")).read()


@pytest.mark.skipif(not _can_unshare(), reason="needs `unshare -rm` (user and mount namespaces) to mount a tmpfs")
def test_full_and_read_only_storage(tmp_path, cache_dir, reference):
    mnt, out = tmp_path / "mnt", tmp_path / "out"
    mnt.mkdir()
    out.mkdir()
    wd = f"{mnt}/run"
    env = child_env(cache_dir)
    for name, argv in (("train", ["train", "synthetic", "--workdir", wd, *RUN_ARGS]),
                       ("eval", ["eval", "synthetic", "--workdir", wd, "--latest"]),
                       ("data", ["data", "build", "av_digits/tiny", "--data_dir", f"{mnt}/data"])):
        script = out / name
        script.write_text("#!/bin/sh\nexec " + " ".join(f"'{a}'" for a in [sys.executable, "-m", "experiments", *argv])
                          + "\n")
        script.chmod(0o755)
    p = subprocess.run(["unshare", "-rm", "sh", "-c", SCENARIO, "scenario", str(mnt), str(out)],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr

    # The disk fills during a save: one line naming the file and the space left, not 13-191 tracebacks.
    line, _ = _one_error_line(out, "full_in_save")
    # The file when the failed write names it (tensorstore does; Orbax's metadata written through epath does not).
    assert line.startswith((f"error: no space left on device: cannot write {wd}/",
                            f"error: no space left on device: cannot write under {wd} (")), line
    assert re.search(r" \((\d+ B|\d+\.\d KiB) free of 256\.0 KiB there\); free some space", line), line
    # The partial save that met the full disk is removed by that run: its space is free for the next start.
    left = (out / "after_full_in_save").read_text().split()
    assert "2" in left and not [n for n in left if "orbax-checkpoint-tmp" in n], left
    # Full, read-only, read-only checkpoints/: refused at start, before anything compiles (or a data build starts).
    for name, expected in (("full_at_start", f"error: no space left on device: cannot write {wd} (0 B free of 256.0 KiB"),
                           ("read_only", f"error: read-only file system: cannot write {wd} ("),
                           ("checkpoints_read_only", f"error: read-only file system: cannot write {wd}/checkpoints ("),
                           ("data_read_only", f"error: read-only file system: cannot write {mnt}/data (")):
        line, stdout = _one_error_line(out, name)
        assert line.startswith(expected), f"{name}: {line}"
        assert "compiling" not in stdout, f"{name}: {stdout}"
    # With space again the same command resumes and finishes as the uninterrupted run did.
    assert int((out / "resumed.rc").read_text()) == 0, (out / "resumed.err").read_text()[-3000:]
    assert "resumed from" in (out / "resumed.out").read_text()
    _, ref_metrics, ref_results = reference
    assert read_metrics(out / "run") == ref_metrics
    assert read_results(out / "run") == ref_results
    # eval runs out of space writing its report: one line; no temporary file, no torn metrics.json.
    line, _ = _one_error_line(out, "eval_full")
    assert line.startswith(f"error: no space left on device: cannot write {wd}/eval/"), line
    assert ".tmp" not in (out / "eval_files").read_text()
    if (out / "eval_metrics.json").exists():  # written whole before the plots: checkpoint 6 on the test split
        written = json.loads((out / "eval_metrics.json").read_text())
        assert written["step"] == 6 and written["eval_split"] == "test"
        if ref_results["test"]["step"] == 6:
            assert written["accuracy"] == pytest.approx(ref_results["test"]["accuracy"])


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    """``files.write_text`` onto ``/dev/full`` (the kernel's ENOSPC on every write) through its temporary file."""
    target = tmp_path / "results.json"
    target.write_text('{"old": 1}')
    os.symlink("/dev/full", f"{target}.{os.getpid()}.tmp")  # the temporary file write_bytes opens
    with pytest.raises(OSError) as raised:
        files.write_text(target, '{"new": 2}')
    assert raised.value.errno == errno.ENOSPC
    assert target.read_text() == '{"old": 1}'
    assert sorted(os.listdir(tmp_path)) == ["results.json"]
    fault = files.storage_fault(raised.value, where=target)
    assert isinstance(fault, files.StorageError)
    usage = shutil.disk_usage(tmp_path)
    assert str(fault).startswith(f"no space left on device: cannot write {target} (")
    assert f"free of {files.human_size(usage.total)} there)" in str(fault)


def test_storage_faults_in_tensorstore_text_and_chains():
    """Orbax raises tensorstore's ValueError, which carries the OS error code in its text."""
    text = ('RESOURCE_EXHAUSTED: Error writing "opt_state.0" in OCDBT database at local file "/x/4.tmp/ocdbt/": '
            'Failed writing: "/x/4.tmp/ocdbt/d/ab": Failed to write 600 bytes to file 15: No space left on device '
            "[os_error_code='28']")
    fault = files.storage_fault(ValueError(text))
    assert str(fault).startswith("no space left on device: cannot write /x/4.tmp/ocdbt/d/ab (")
    try:
        try:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), "/ro/file")
        except OSError as e:
            raise RuntimeError("wrapped") from e
    except RuntimeError as e:
        assert str(files.storage_fault(e)).startswith("read-only file system: cannot write /ro/file (")
    # tensorflow-datasets' ArrayRecord writer during `data build` names the file unquoted.
    text = ('Failed to finalize writing of split "train": write() failed: No space left on device; writing '
            "/d/tfds/av_digits/tiny/incomplete.X_1.0.0/av_digits-train.array_record-00000-of-00001; at byte 303104")
    assert str(files.storage_fault(RuntimeError(text))).startswith(
        "no space left on device: cannot write /d/tfds/av_digits/tiny/incomplete.X_1.0.0/"
        "av_digits-train.array_record-00000-of-00001 (")
    denied = files.storage_fault(PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/srv/run/results.json"))
    assert str(denied).startswith("permission denied: for /srv/run/results.json (")
    assert str(denied).endswith("; check its owner and mode, or use another location")
    assert files.storage_fault(ValueError("shape mismatch")) is None
    assert files.storage_fault(OSError(errno.ENOENT, "No such file or directory", "/x")) is None


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through chmod 555 (the namespace test covers EROFS)")
def test_read_only_checkpoints_folder_is_refused_by_the_probe(tmp_path):
    d = tmp_path / "checkpoints"
    d.mkdir()
    d.chmod(0o555)
    try:
        with pytest.raises(files.StorageError, match=f"permission denied: for {d} "):
            files.check_writable(d)
    finally:
        d.chmod(0o755)


def test_space_warning_compares_with_the_free_space_of_the_file_system(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    assert files.space_warning(tmp_path / "checkpoints", 1024, "2 + 1 checkpoints") is None  # not yet created
    line = files.space_warning(tmp_path / "checkpoints", free + 2**40, "2 + 1 checkpoints of 1.0 TiB")
    assert line.startswith("warning: ") and f"where 2 + 1 checkpoints of 1.0 TiB go ({tmp_path}/checkpoints)" in line
    assert f"less than the {files.human_size(free + 2**40)} they need" in line
    assert files.space_warning("gs://bucket/run", 2**60, "checkpoints") is None  # object stores: not measured


def test_echoes_are_held_then_replayed_or_dropped():
    """Log records carrying a storage fault wait for the command's end: printed then, or dropped with its line."""
    import logging

    from experiments import storage_faults

    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logging.getLogger().addHandler(handler)
    try:
        with storage_faults.HeldBack():
            logging.getLogger("asyncio").error("write failed: No space left on device")
            logging.getLogger("absl").warning("unrelated")
            assert seen == ["unrelated"]
        assert seen == ["unrelated", "write failed: No space left on device"]  # the command went on: printed
        seen.clear()
        held = storage_faults.HeldBack().__enter__()
        logging.getLogger("asyncio").error("write failed: No space left on device")
        held.finish(storage_failed=True)  # the command's one line says it
        logging.getLogger("absl").error("a late save thread: No space left on device")
        assert seen == []
        for t in held._targets:
            t.removeFilter(held)
        sys.unraisablehook = held._previous_hook
    finally:
        logging.getLogger().removeHandler(handler)
