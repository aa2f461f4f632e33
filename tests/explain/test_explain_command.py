"""``python -m experiments explain`` and ``eval --explain`` end to end on a tiny synthetic run."""
import json
import os

import numpy as np
import pytest

from experiments.configs import synthetic as synthetic_config
from mmjax.data import synthetic
from mmjax.train import loop

from tests.experiments._cli_helper import run_cli


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    c = synthetic_config.get_config()
    c.model.encoders = {"a": {"name": "mlp", "features": (8,)}, "b": {"name": "mlp", "features": (8,)}}
    c.model.fusion = "cross_attention"
    c.model.fusion_config = {"out_dim": 8, "dim": 8, "num_heads": 2}
    c.model.head_hidden = ()
    c.total_steps, c.batch_size, c.log_every, c.eval_every, c.checkpoint_every = 4, 8, 2, 0, 0
    c.data.eval_examples = 16
    c.parallel.mode = "single"
    c.tensorboard = False
    wd = str(tmp_path_factory.mktemp("explain") / "run")
    loop.train_and_evaluate(c, wd, info_fn=lambda cfg: synthetic.info(cfg.data), console=None)
    return wd


def _check_example(d, classes, expect_attention=True):
    summary = json.load(open(os.path.join(d, "explanation.json")))
    shap = json.load(open(os.path.join(d, "contributions.json")))
    assert set(shap["values"]) == {"a", "b"}
    assert sum(shap["values"].values()) == pytest.approx(shap["full"] - shap["empty"], abs=1e-5)
    assert summary["explained_class"] in classes and sum(summary["probabilities"].values()) == pytest.approx(1, abs=1e-5)
    assert summary["contributions"]["full"] == pytest.approx(summary["probabilities"][summary["explained_class"]], rel=1e-4)
    for m in ("a", "b"):
        s = summary["saliency"][m]
        attr = np.load(os.path.join(d, f"saliency_{m}.npy"))
        assert attr.shape == ({"a": 6, "b": 4}[m],) and s["sum"] == pytest.approx(float(attr.sum()), abs=1e-5)
        assert s["gap"] == pytest.approx(s["sum"] - (s["f_input"] - s["f_baseline"]), abs=1e-6)
        assert open(os.path.join(d, f"saliency_{m}.png"), "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert open(os.path.join(d, "contributions.png"), "rb").read(4) == b"\x89PNG"
    if expect_attention:
        weights = json.load(open(os.path.join(d, "attention.json")))
        assert sorted(weights) == ["fusion/a_from_b_0/cross_attn", "fusion/b_from_a_0/cross_attn"]
        for k, path in enumerate(sorted(weights)):
            w = np.array(weights[path])
            assert w.shape == (2, 1, 1) and np.allclose(w.sum(-1), 1, atol=1e-5)
            assert os.path.exists(os.path.join(d, f"attention_{k}.png"))
    return summary


def test_explain_one_example_and_a_chosen_class(workdir, tmp_path, capsys):
    out = str(tmp_path / "x")
    a, b = ",".join(["0.5"] * 6), "1,-1,2,0"
    assert run_cli("explain", "--workdir", workdir, f"a={a}", f"b={b}", "--out", out, "--ig_steps", "32") == 0
    assert "example 0: predicted" in capsys.readouterr().out
    first = _check_example(os.path.join(out, "example_0"), ["0", "1", "2"])
    other = next(c for c in ("0", "1", "2") if c != first["predicted"])
    assert run_cli("explain", "--workdir", workdir, f"a={a}", "--out", out, "--class", other, "--value", "logit") == 0
    summary = json.load(open(os.path.join(out, "example_0", "explanation.json")))
    assert summary["explained_class"] == other and summary["value"] == "logit"
    assert summary["contributions"]["values"]["b"] == 0.0  # b left out: missing in every coalition
    assert run_cli("explain", "--workdir", workdir, "a=1,2", "--out", out) == 2
    assert "expected shape (6,)" in capsys.readouterr().err
    assert run_cli("explain", "--workdir", workdir, f"a={a}", "--class", "zebra") == 2
    assert "--class 'zebra' is not one of the classes" in capsys.readouterr().err


def test_eval_explain_writes_the_first_examples(workdir):
    assert run_cli("eval", "--workdir", workdir, "--explain", "3", "--no_plots") == 0
    d = os.path.join(workdir, "eval", "explain")
    assert sorted(os.listdir(d)) == ["example_0", "example_1", "example_2"]
    summary = json.load(open(os.path.join(d, "example_1", "explanation.json")))
    assert set(summary["saliency"]) == {"a", "b"} and not os.path.exists(os.path.join(d, "example_1", "contributions.png"))
