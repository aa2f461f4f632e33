"""image_text through the CLI on a public tfds dataset (offline, tfds.testing.mock_data), and the stamps configs."""
import json
import os

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from experiments.__main__ import main  # noqa: E402
from experiments.config_utils import apply_overrides, load_config  # noqa: E402

STAMPS_ROOT = "/usr/share/tuxpaint/stamps"
TINY_TEXT = ["--config.model.encoders.text.hidden_dim=8", "--config.model.encoders.text.num_layers=1",
             "--config.model.encoders.text.num_heads=2", "--config.model.encoders.text.mlp_dim=16",
             "--config.model.encoders.image.features=(4,)", "--config.model.encoders.image.out_dim=8",
             "--config.model.fusion_config.out_dim=8", "--config.model.head_hidden=()"]
RUN = ["--config.total_steps=3", "--config.batch_size=4", "--config.log_every=1", "--config.eval_every=0",
       "--config.eval_steps=1", "--config.parallel.mode=single", "--config.data.prefetch=0"]


def test_image_text_coco_captions_mock(tmp_path):
    """COCO captions by config keys alone: first caption + image, multi-label over the 80 object classes."""
    wd = str(tmp_path / "run")
    args = ["train", "image_text", "--workdir", wd, *RUN, *TINY_TEXT,
            f"--config.data.data_dir={tmp_path / 'data'}",
            "--config.data.name=coco_captions", "--config.data.label=objects/label",
            "--config.data.label_kind=multi_hot", "--config.data.class_weights=None",
            "--config.data.modalities.text.feature=captions/text", "--config.data.modalities.text.max_len=16",
            "--config.data.modalities.image.size=(16,16)", "--config.data.modalities.image.augment_pad=0",
            "--config.loss.name=sigmoid_bce", "--config.eval_split=val", "--config.checkpoint.best_metric=",
            "--config.model.encoders.text.max_len=16"]
    with tfds.testing.mock_data(num_examples=8):
        assert main(args) == 0
    lines = [json.loads(l) for l in open(os.path.join(wd, "metrics.jsonl"))]
    losses = [l["loss"] for l in lines if "loss" in l and l.get("step", 0) <= 3 and "eval/loss" not in l]
    assert len(losses) >= 3 and np.isfinite(losses).all()
    # Untrained sigmoid BCE over 80 labels starts near log(2) per label.
    assert 0.3 < losses[0] < 1.2
    result = json.load(open(os.path.join(wd, "results.json")))
    assert result["step"] == 3 and np.isfinite(result["loss"])


def test_none_override_resets_a_key():
    c = load_config("image_text")
    assert c.data.class_weights == "balanced"
    apply_overrides(c, [("data.class_weights", "None")])
    assert c.data.class_weights is None


def test_stamps_configs_select_modalities():
    full = load_config("stamps")
    assert sorted(full.model.encoders) == ["audio", "image", "text"] and full.data.class_weights == "balanced"
    for name, mods in [("stamps_image_text", ["image", "text"]), ("stamps_image_speech", ["audio", "image"]),
                       ("stamps_text_speech", ["audio", "text"])]:
        c = load_config(name)
        assert sorted(c.model.encoders) == mods and sorted(c.data.modalities) == mods, name
        assert sorted(c.data.modality_dropout) == mods and c.model.fusion == full.model.fusion
    it = load_config("image_text")
    assert sorted(it.data.modalities) == ["image", "text"] and it.data.name == "stamps/en"


def _stamps_data_dir(tmp_path):
    """The configured tfds dir when stamps is already prepared there (saves a rebuild), else a fresh one."""
    from mmjax.data.config import resolve_data_dir

    default = resolve_data_dir(None)
    return default if os.path.isdir(os.path.join(default, "stamps")) else str(tmp_path / "data")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(STAMPS_ROOT), reason="tuxpaint-stamps-default is not installed")
def test_train_stamps_two_steps(tmp_path):
    """The real stamps data through the CLI: all three modalities, class-weighted loss, macro-F1 at eval."""
    wd = str(tmp_path / "run")
    args = ["train", "stamps", "--workdir", wd, *RUN, "--config.total_steps=2",
            f"--config.data.data_dir={_stamps_data_dir(tmp_path)}",
            "--config.data.modalities.image.size=(16,16)",
            "--config.model.encoders.image.features=(4,)", "--config.model.encoders.image.out_dim=8",
            "--config.model.encoders.text.embed_dim=8", "--config.model.encoders.text.hidden_dim=8",
            "--config.model.encoders.audio.features=(4,)", "--config.model.encoders.audio.out_dim=8",
            "--config.model.encoders.audio.n_mels=16", "--config.model.fusion_config.out_dim=8",
            "--config.model.head_hidden=()"]
    assert main(args) == 0
    result = json.load(open(os.path.join(wd, "results.json")))
    assert result["step"] == 2 and 0.0 <= result["accuracy"] <= 1.0 and 0.0 <= result["macro_f1"] <= 1.0
    # Eval is not class weighted (balanced weights of 4 examples would almost never sum to 4).
    assert result["num_examples"] == pytest.approx(4.0)
