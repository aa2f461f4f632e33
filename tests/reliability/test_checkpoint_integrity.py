"""Damaged checkpoints never restore silently; evals survive SIGTERM and kills.

Every fault is made in real files of the shared reference run (checkpoints 4 and 6 of
the 6-step synthetic run, see conftest): bytes flipped where Orbax alone reads the
arrays back without an error but with other numbers, a truncated metrics item, a
checkpoint of the format before checksums. The signals go to real training processes.
"""
import glob
import json
import os
import shutil
import signal
import sys

import numpy as np
import pytest

from tests.reliability.conftest import (Child, child_env, read_metrics, read_results, run, steps,
                                        train_cmd, RUN_ARGS)

pytestmark = pytest.mark.slow


def _copy(reference, tmp_path, name="run"):
    wd = str(tmp_path / name)
    shutil.copytree(reference[0], wd)
    return wd


def _restore_plain(step_dir):
    """The state of a step as Orbax alone reads it (no checks of ours)."""
    import orbax.checkpoint as ocp
    with ocp.StandardCheckpointer() as reader:
        return reader.restore(os.path.join(step_dir, "state"))


def _xor(path, offset, n=4):
    with open(path, "r+b") as f:
        f.seek(offset)
        data = f.read(n)
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in data))


def _silent_flip(step_dir, scratch):
    """XORs 4 bytes of the largest array data file of ``step_dir`` at an offset where plain Orbax
    restores the step without an error but with other values (tried on copies first)."""
    import jax
    clean = jax.tree.leaves(_restore_plain(step_dir))
    data = max(glob.glob(os.path.join(step_dir, "state", "ocdbt.process_0", "d", "*")), key=os.path.getsize)
    size = os.path.getsize(data)
    for k, frac in enumerate((0.5, 0.3, 0.7, 0.4, 0.6)):
        trial = os.path.join(str(scratch), f"trial{k}")
        shutil.copytree(step_dir, trial)
        _xor(os.path.join(trial, os.path.relpath(data, step_dir)), int(size * frac))
        try:
            got = jax.tree.leaves(_restore_plain(trial))
        except Exception:  # noqa: BLE001 - a loud failure is not the fault this test is about
            continue
        if any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(clean, got)):
            _xor(data, int(size * frac))
            return
    raise AssertionError(f"no offset of {data} gave a silent corruption")


def _eval_cmd(wd, *extra):
    return [sys.executable, "-m", "experiments", "eval", "synthetic", "--workdir", wd, *RUN_ARGS, *extra]


def _lines(out, word):
    return [line for line in out.splitlines() if word in line]


def test_flipped_bytes_train_resume_falls_back_and_reproduces_the_run(tmp_path, reference, cache_dir):
    _, ref_metrics, ref_results = reference
    wd = _copy(reference, tmp_path)
    _silent_flip(os.path.join(wd, "checkpoints", "6"), tmp_path)
    p = run(train_cmd(wd), child_env(cache_dir))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    bad = _lines(p.stdout, "is damaged")
    assert len(bad) == 1 and bad[0].startswith("checkpoint 6 in ") and "checksum mismatch in " in bad[0], p.stdout
    assert "trying an older one" in bad[0] and "at step 4" in p.stdout
    assert len(os.listdir(os.path.join(wd, "checkpoints_corrupt"))) == 1
    # Steps 5 and 6 trained again from 4: the uninterrupted run's records and results, exactly.
    assert read_metrics(wd) == ref_metrics
    assert read_results(wd) == ref_results


def test_flipped_bytes_eval_load_and_init_from_use_the_good_checkpoint(tmp_path, reference, cache_dir, capsys):
    import mmjax
    from mmjax.errors import CheckpointError
    from mmjax.train.checkpoint import load_params
    import jax

    # The eval command: one line about it, then the eval of step 4.
    wd = _copy(reference, tmp_path, "for_eval")
    _silent_flip(os.path.join(wd, "checkpoints", "6"), tmp_path / "s3")
    p = run(_eval_cmd(wd, "--split", "validation"), child_env(cache_dir))
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stdout[-3000:] + p.stderr[-3000:]
    bad = _lines(p.stderr, "is damaged")
    assert len(bad) == 1 and bad[0].startswith("checkpoint 6 in ") and "checksum mismatch" in bad[0], p.stderr
    assert "eval of step 4 (best) on validation" in p.stdout
    with open(os.path.join(wd, "eval", "metrics.json")) as f:
        assert json.load(f)["step"] == 4

    # mmjax.load: set aside, the next best (4) restored.
    clean4 = load_params(reference[0], step=4)
    wd = _copy(reference, tmp_path, "for_load")
    _silent_flip(os.path.join(wd, "checkpoints", "6"), tmp_path / "s2")
    model = mmjax.load(wd)
    assert model.step == 4 and steps(wd) == [4]
    jax.tree.map(np.testing.assert_array_equal, model.variables["params"], clean4)
    assert "checkpoint 6 in " in capsys.readouterr().err

    # init_from (another run's directory, nothing moved): the newest good step, said in one line.
    wd = _copy(reference, tmp_path, "for_init")
    _silent_flip(os.path.join(wd, "checkpoints", "6"), tmp_path / "s1")
    said = []
    params = load_params(wd, say=said.append)
    assert len(said) == 1 and said[0].startswith("init_from: checkpoint 6 in ") and "checksum mismatch" in said[0]
    jax.tree.map(np.testing.assert_array_equal, params, clean4)
    with pytest.raises(CheckpointError, match="checkpoint 6 in .* is damaged"):  # DamagedCheckpointError
        load_params(wd, step=6)
    assert steps(wd) == [4, 6]


def test_truncated_metrics_item_is_set_aside_before_anything_reads_it(tmp_path, reference, cache_dir):
    _, ref_metrics, ref_results = reference
    env = child_env(cache_dir)
    for name in ("train", "eval"):
        wd = _copy(reference, tmp_path, name)
        item = os.path.join(wd, "checkpoints", "6", "metrics", "metrics")
        assert os.path.getsize(item) > 20
        os.truncate(item, 20)  # truncate -s 20 checkpoints/6/metrics/metrics
        p = run(train_cmd(wd) if name == "train" else _eval_cmd(wd), env)
        assert p.returncode == 0 and "Traceback" not in p.stderr, p.stdout[-3000:] + p.stderr[-3000:]
        bad = _lines(p.stdout + p.stderr, "is damaged")
        assert len(bad) == 1 and bad[0].startswith("checkpoint 6 in ") and "metrics/metrics" in bad[0], bad
        assert "JSONDecodeError" in bad[0]
        if name == "train":
            assert "at step 4" in p.stdout
            assert read_metrics(wd) == ref_metrics and read_results(wd) == ref_results
        else:
            assert "eval of step 4 (best)" in p.stdout


def test_checkpoint_without_checksums_restores_unverified(tmp_path, reference, capsys):
    """The format before checksums (no ``checksums`` item) still restores, with a line saying so."""
    import mmjax
    from mmjax.train.checkpoint import load_params
    import jax

    wd = _copy(reference, tmp_path)
    step_dir = os.path.join(wd, "checkpoints", "6")
    shutil.rmtree(os.path.join(step_dir, "checksums"))
    with open(os.path.join(step_dir, "_CHECKPOINT_METADATA")) as f:
        meta = json.load(f)
    meta["item_handlers"].pop("checksums")
    with open(os.path.join(step_dir, "_CHECKPOINT_METADATA"), "w") as f:
        json.dump(meta, f)
    model = mmjax.load(wd)
    assert model.step == 6 and steps(wd) == [4, 6]
    err = capsys.readouterr().err
    assert "checkpoint 6 in " in err and "has no checksums" in err and "restored unverified" in err
    jax.tree.map(np.testing.assert_array_equal, model.variables["params"], load_params(reference[0], step=6))


def _eval_record(records, step):
    return next(r for r in records if r["step"] == step and "eval_accuracy" in r)


@pytest.mark.parametrize("point", ["after_step@3", "during_eval@3"])
def test_sigterm_on_an_eval_step_keeps_that_eval(tmp_path, reference, cache_dir, point):
    """SIGTERM after the train step of an eval step, or during its eval: the eval runs, checkpoint 3
    is saved ranked by it, and the resumed run's records equal the uninterrupted run's.

    Before: SIGTERM after step 3 saved checkpoint 3 without its eval and the resume started at 4
    (the eval of 3 was never run); SIGTERM during the eval trained step 4 and saved that instead.
    """
    _, ref_metrics, ref_results = reference
    wd = str(tmp_path / "run")
    env = child_env(cache_dir)
    c = Child(train_cmd(wd), dict(env, MMJAX_FAULT=f"{point}:sleep"), tmp_path / "m")
    c.wait_marker()
    assert c.kill(signal.SIGTERM) == 0, c.output()
    out = c.output()
    assert "preempted (SIGTERM): saved checkpoint 3" in out and "eval @ 3:" in out, out
    ref3 = _eval_record(ref_metrics, 3)
    with open(os.path.join(wd, "checkpoints", "3", "metrics", "metrics")) as f:
        assert json.load(f)["accuracy"] == ref3["eval_accuracy"]
    assert _eval_record(read_metrics(wd), 3) == ref3
    if point != "after_step@3":
        return  # the resume below is the same for both
    p = run(train_cmd(wd), env)
    assert p.returncode == 0 and "at step 3" in p.stdout, p.stdout[-3000:] + p.stderr[-3000:]
    assert read_metrics(wd) == ref_metrics
    results = read_results(wd)
    assert {k: v for k, v in results.items() if k != "test"} == {k: v for k, v in ref_results.items() if k != "test"}
    # Checkpoint 3 is ranked now: the test split reports it when it beats step 6 on validation.
    best = 3 if ref3["eval_accuracy"] > _eval_record(ref_metrics, 6)["eval_accuracy"] else 6
    assert results["test"]["step"] == best
    if best == 6:
        assert results == ref_results


def test_kill_during_the_final_eval_keeps_the_final_checkpoint(tmp_path, reference, cache_dir):
    """The final checkpoint is committed before the final eval; the rerun owes and runs that eval."""
    _, ref_metrics, ref_results = reference
    wd = str(tmp_path / "run")
    env = child_env(cache_dir)
    d = Child(train_cmd(wd), dict(env, MMJAX_FAULT="during_eval@6:sleep"), tmp_path / "m")
    d.wait_marker()
    d.kill()
    assert steps(wd) == [4, 6] and not os.path.exists(os.path.join(wd, "results.json"))
    assert not os.path.exists(os.path.join(wd, "checkpoints", "6", "metrics"))  # not ranked yet
    p = run(train_cmd(wd), env)
    assert p.returncode == 0 and "at step 6" in p.stdout, p.stdout[-3000:] + p.stderr[-3000:]
    assert "eval @ 6:" in p.stdout
    assert read_metrics(wd) == ref_metrics  # the eval record of step 6 once
    assert read_results(wd) == ref_results
    with open(os.path.join(wd, "checkpoints", "6", "metrics", "metrics")) as f:
        assert json.load(f)["accuracy"] == ref_results["accuracy"]


def test_a_killed_save_leaves_no_partial_folder_for_the_next_run(tmp_path, cache_dir):
    """kill -9 inside the final save leaves ``6.orbax-checkpoint-tmp``; the next run removes it at its
    start (before it saves anything), and resumes from the last committed step."""
    wd = str(tmp_path / "run")
    env = child_env(cache_dir)
    ckdir = os.path.join(wd, "checkpoints")
    a = Child(train_cmd(wd), dict(env, MMJAX_FAULT="before_commit@6:sleep"), tmp_path / "m1")
    a.wait_marker()
    a.kill()
    assert [d for d in os.listdir(ckdir) if d.startswith("6.orbax-checkpoint-tmp")], os.listdir(ckdir)
    assert steps(wd) == [2, 4]
    b = Child(train_cmd(wd), dict(env, MMJAX_FAULT="after_step@5:sleep"), tmp_path / "m2")
    b.wait_marker()  # step 5 trained, nothing saved by this run yet
    try:
        assert "at step 4" in b.output()
        assert not [d for d in os.listdir(ckdir) if "orbax-checkpoint-tmp" in d], os.listdir(ckdir)
    finally:
        b.kill()


def test_rerun_of_a_finished_run_keeps_one_eval_record_per_step(tmp_path, reference, cache_dir):
    """The same command on a finished run resumes at the last step and evaluates it again: the earlier
    eval record of that step is replaced, not repeated (before, metrics.jsonl held it twice)."""
    _, ref_metrics, ref_results = reference
    wd = _copy(reference, tmp_path)
    p = run(train_cmd(wd), child_env(cache_dir))
    assert p.returncode == 0 and "at step 6" in p.stdout, p.stdout[-3000:] + p.stderr[-3000:]
    assert read_metrics(wd) == ref_metrics and read_results(wd) == ref_results
