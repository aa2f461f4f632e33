"""``python -m experiments train/eval/list`` end to end on the SYNTHETIC experiment."""
import importlib
import json
import os
import subprocess
import sys

import pytest

from experiments import config_utils
from experiments.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Runs experiments.__main__.main, leaving out commands whose module is not in this tree.
LAUNCH = (
    "import importlib, sys\n"
    "import experiments.__main__ as m\n"
    "for k, v in list(m.COMMANDS.items()):\n"
    "    try: importlib.import_module('experiments.commands.' + v)\n"
    "    except ModuleNotFoundError: m.COMMANDS.pop(k)\n"
    "sys.exit(m.main(sys.argv[1:]))\n"
)


def _cli(*args, timeout=400):
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-c", LAUNCH, *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=timeout)


def test_overrides_cast_types_and_reject_unknown_keys():
    c = config_utils.load_config("synthetic")
    config_utils.apply_overrides(c, [("total_steps", "7"), ("optim.learning_rate", "1e-2"),
                                     ("tensorboard", "false"), ("optim.freeze", "encoder_a,head"),
                                     ("parallel.mesh", "{'data': 2, 'fsdp': 4}"), ("model.head_hidden", "(4, 2)")])
    assert c.total_steps == 7 and c.optim.learning_rate == 0.01 and c.tensorboard is False
    assert c.optim.freeze == ("encoder_a", "head") and c.model.head_hidden == (4, 2)
    assert c.parallel.mesh.fsdp == 4
    with pytest.raises(UserError, match="unknown config key 'optim.learning_rat'.*'optim.learning_rate'"):
        config_utils.apply_overrides(c, [("optim.learning_rat", "1")])
    with pytest.raises(UserError, match="total_steps.*int"):
        config_utils.apply_overrides(c, [("total_steps", "many")])
    with pytest.raises(UserError, match="unknown experiment 'synthetc'.*'synthetic'"):
        config_utils.load_config("synthetc")
    assert {"synthetic", "av_digits"} <= set(config_utils.experiment_names())


def test_fusion_on_the_command_line_brings_its_options():
    from experiments.configs import av_digits

    c = config_utils.load_config("av_digits")
    # Whatever the order on the command line, model.fusion comes first, then its refinements.
    config_utils.apply_overrides(c, [("model.fusion_config.out_dim", "32"), ("model.fusion", "cross_attention")])
    assert c.model.fusion == "cross_attention"
    assert c.model.fusion_config.to_dict() == {**av_digits.FUSION_CONFIGS["cross_attention"], "out_dim": 32}
    # An option the block takes but the config does not list can be added...
    c = config_utils.load_config("av_digits")
    config_utils.apply_overrides(c, [("model.fusion", "perceiver"), ("model.fusion_config.num_latents", "4")])
    assert c.model.fusion_config.num_latents == 4 and c.model.fusion_config.pooled_token is True
    # ... and a typo lists the block's options.
    with pytest.raises(UserError, match="fusion block 'perceiver' has no option 'num_latent'.*'num_latents'"):
        config_utils.apply_overrides(c, [("model.fusion_config.num_latent", "4")])


def test_unknown_config_key_exits_2_with_one_line(tmp_path):
    p = _cli("train", "synthetic", "--workdir", str(tmp_path), "--config.optim.lerning_rate=0.1")
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "optim.lerning_rate" in lines[0] and "optim.learning_rate" in lines[0]


@pytest.mark.slow
def test_train_then_eval_synthetic(tmp_path):
    wd = str(tmp_path / "run")
    p = _cli("train", "synthetic", "--workdir", wd, "--config.total_steps=6", "--config.log_every=3",
             "--config.eval_every=3", "--config.checkpoint_every=3", "--config.batch_size=8",
             "--config.data.eval_examples=16", "--config.parallel.mode=single")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert "step 6/6" in p.stdout and "steps/s" in p.stdout and "ETA" in p.stdout
    with open(os.path.join(wd, "metrics.jsonl")) as f:
        records = [json.loads(l) for l in f]
    assert [r["step"] for r in records if "loss" in r] == [3, 6]
    assert any("eval_accuracy" in r for r in records)
    with open(os.path.join(wd, "results.json")) as f:
        results = json.load(f)
    assert results["step"] == 6 and 0.0 <= results["accuracy"] <= 1.0
    assert sum(map(sum, results["confusion_matrix"])) == 16
    assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["3", "6"]
    assert any(f.startswith("events") for f in os.listdir(os.path.join(wd, "tensorboard")))
    # eval reads the run's config.json: no experiment, no retyped overrides; the best checkpoint
    # (selected on validation) on the test split is what training reported as its test result.
    p = _cli("eval", "--workdir", wd, "--no_plots")
    assert p.returncode == 0, p.stderr[-2000:]
    with open(os.path.join(wd, "eval", "metrics.json")) as f:
        ev = json.load(f)
    assert ev["eval_split"] == "test" and ev["step"] == results["test"]["step"]
    assert ev["accuracy"] == pytest.approx(results["test"]["accuracy"])
    p = _cli("eval", "--workdir", wd, "--latest", "--split", "validation", "--no_plots")
    assert p.returncode == 0, p.stderr[-2000:]
    with open(os.path.join(wd, "eval", "metrics.json")) as f:
        ev = json.load(f)
    assert ev["step"] == 6 and ev["accuracy"] == pytest.approx(results["accuracy"])


def test_list_shows_experiments():
    p = _cli("list", timeout=120)
    assert p.returncode == 0, p.stderr
    assert "synthetic" in p.stdout and "SYNTHETIC" in p.stdout and "av_digits" in p.stdout


def test_sequence_override_items_keep_their_type():
    c = config_utils.load_config("av_digits")
    config_utils.apply_overrides(c, [("model.encoders.image.features", "16,32,64")])
    assert c.model.encoders.image.features == (16, 32, 64)
    for bad, item in (("16,32,64x", "'64x'"), ("16,1.5", "1.5")):
        with pytest.raises(UserError, match=f"model.encoders.image.features: item {item} is not an int"):
            config_utils.apply_overrides(c, [("model.encoders.image.features", bad)])
