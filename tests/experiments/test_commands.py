"""sweep / eval / list end to end on the SYNTHETIC experiment (in process, a few steps each)."""
import json
import os

import numpy as np
import pytest

from experiments.__main__ import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TINY = ["--config.total_steps=4", "--config.log_every=2", "--config.eval_every=0", "--config.checkpoint_every=0",
        "--config.batch_size=8", "--config.data.eval_examples=20", "--config.parallel.mode=single",
        "--config.tensorboard=false", "--config.model.encoders.a.features=(8,)",
        "--config.model.encoders.b.features=(8,)", "--config.model.head_hidden=()",
        "--config.model.fusion_config.out_dim=8"]


def _assert_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE, path
    import matplotlib.image as mpimg

    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("sweep"))
    assert main(["sweep", "synthetic", "--workdir", wd, "--fusions", "concat,sum", "--seeds", "2", "--quiet",
                 *TINY]) == 0
    return wd


def test_sweep_writes_a_row_per_fusion_and_baseline(sweep_dir):
    rows = json.load(open(os.path.join(sweep_dir, "sweep.json")))["rows"]
    assert [r["name"] for r in rows] == ["concat", "sum", "a_only", "b_only"]
    for r in rows:
        accs = [s["accuracy"] for s in r["seeds"]]
        assert len(accs) == 2 and r["accuracy_mean"] == pytest.approx(np.mean(accs))
        assert r["accuracy_std"] == pytest.approx(np.std(accs, ddof=1))
        for k, seed in enumerate(r["seeds"]):  # test accuracy of the checkpoint selected on validation
            res = json.load(open(os.path.join(sweep_dir, "runs", r["name"], f"seed_{k}", "results.json")))
            assert seed["accuracy"] == res["test"]["accuracy"] and seed["validation_accuracy"] == res["accuracy"]
        assert r["params"] > 0 and r["wall_time_sec"] > 0
    by = {r["name"]: r for r in rows}
    # Parameter counts against hand counts: mlp encoders 6->8 and 4->8; concat proj 16->8, head 8->3.
    enc = (6 * 8 + 8) + (4 * 8 + 8)
    assert by["concat"]["params"] == enc + (16 * 8 + 8) + (8 * 3 + 3)
    assert by["a_only"]["params"] == (6 * 8 + 8) + (8 * 3 + 3)  # encoder + head, no fusion
    md = open(os.path.join(sweep_dir, "sweep.md")).read()
    for name in ("concat", "sum", "a_only", "b_only"):
        assert sum(line.startswith(f"| {name} |") for line in md.splitlines()) == 1
    _assert_png(os.path.join(sweep_dir, "sweep.png"))


def test_sweep_compares_each_fusion_with_the_best_unimodal_baseline_seed_by_seed(sweep_dir):
    summary = json.load(open(os.path.join(sweep_dir, "sweep.json")))
    by = {r["name"]: r for r in summary["rows"]}
    best = max(("a_only", "b_only"), key=lambda n: by[n]["accuracy_mean"])
    for name in ("concat", "sum"):
        want = [f["accuracy"] - b["accuracy"] for f, b in zip(by[name]["seeds"], by[best]["seeds"])]
        got = summary["paired_vs_best_unimodal"][name]
        assert got["baseline"] == best and got["diffs"] == pytest.approx(want)
        assert got["wins"] == sum(d > 0 for d in want) and got["mean"] == pytest.approx(np.mean(want))
    md = open(os.path.join(sweep_dir, "sweep.md")).read()
    assert f"best unimodal baseline ({best})" in md


def test_same_seed_same_numbers(sweep_dir, tmp_path):
    """Seed reproducibility: retraining seed 0 of the concat row gives bit-identical results."""
    from experiments import config_utils
    from mmjax.train import loop

    c = config_utils.load_config("synthetic")
    config_utils.apply_overrides(c, [tuple(a[len("--config."):].split("=", 1)) for a in TINY])
    res = loop.train_and_evaluate(c, str(tmp_path / "again"), console=None)
    first = json.load(open(os.path.join(sweep_dir, "runs", "concat", "seed_0", "results.json")))
    assert res["accuracy"] == first["accuracy"] and res["loss"] == first["loss"]
    c.seed = 1
    other = loop.train_and_evaluate(c, str(tmp_path / "seed1"), console=None)
    assert other["loss"] != first["loss"]  # a different seed is a different run


def test_eval_writes_metrics_and_plots(sweep_dir):
    wd = os.path.join(sweep_dir, "runs", "concat", "seed_0")
    assert main(["eval", "--workdir", wd, "--noise_levels", "0,1"]) == 0  # the run's own config.json
    m = json.load(open(os.path.join(wd, "eval", "metrics.json")))
    results = json.load(open(os.path.join(wd, "results.json")))
    assert m["accuracy"] == pytest.approx(results["test"]["accuracy"])  # same checkpoint, same test set
    assert m["num_examples"] == 20
    cm = np.asarray(m["confusion_matrix"])
    assert cm.shape == (3, 3) and cm.sum() == 20
    assert set(m["per_class"]) == {"0", "1", "2"} and 0 <= m["roc_auc_ovr"] <= 1
    r = m["robustness"]
    assert set(r["masked"]) == {"a", "b"} and set(r["noise"]["a"]) == {"0.0", "1.0"}
    assert r["noise"]["a"]["0.0"] == pytest.approx(m["accuracy"])
    for name in ("confusion_matrix.png", "roc.png", "robustness.png"):
        _assert_png(os.path.join(wd, "eval", name))


def test_clear_errors(tmp_path, capsys):
    assert main(["sweep", "synthetic", "--workdir", str(tmp_path), "--fusions", "concat,nope"]) == 2
    assert "--fusions: unknown fusion ['nope']" in capsys.readouterr().err
    assert main(["sweep", "synthetic", "--workdir", str(tmp_path), "--config.total_step=3"]) == 2
    assert "'total_steps'" in capsys.readouterr().err
    assert main(["eval", "synthetic", "--workdir", str(tmp_path), "--noise_levels", "a,b"]) == 2
    assert "--noise_levels" in capsys.readouterr().err
    assert main(["eval", "synthetic", "--workdir", str(tmp_path / "empty")]) == 2
    assert "train first" in capsys.readouterr().err
    assert main(["train", "av_digits", "--workdir", str(tmp_path), "--config.modalities=video"]) == 2
    assert "'video'" in capsys.readouterr().err


def test_list_shows_every_experiment(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("synthetic", "av_digits", "av_digits_image", "av_digits_audio"):
        assert any(line.startswith(name + " ") for line in out.splitlines())
