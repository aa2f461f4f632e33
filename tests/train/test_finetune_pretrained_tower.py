"""Fine-tuning a classifier on a converted tower: a real run of the training loop with the image tower
converted from a tiny random CLIP checkpoint, loaded by ``init_from.pretrained`` and frozen by
``optim.freeze``. The frozen tower ends the run equal to the checkpoint's weights; the head learns."""
import json

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from experiments.configs import base  # noqa: E402
from mmjax.encoders.hf import pretrained_variables  # noqa: E402
from mmjax.encoders.hf.preprocess import ImagePreprocess  # noqa: E402

SIZE, CLASSES = 32, ["dark", "mid", "light"]
VISION = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=SIZE,
              patch_size=8)
TEXT = dict(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=16)


def _checkpoint(path):
    torch.manual_seed(0)
    model = transformers.CLIPModel(transformers.CLIPConfig(vision_config=VISION, text_config=TEXT,
                                                           projection_dim=16))
    model.eval().save_pretrained(str(path))
    transformers.CLIPImageProcessor(size={"shortest_edge": SIZE},
                                    crop_size={"height": SIZE, "width": SIZE}).save_pretrained(str(path))


def _batch(rng, n):
    """uint8 images whose brightness is the class (as the data pipeline hands them over)."""
    label = rng.integers(0, 3, n).astype(np.int32)
    image = np.clip(rng.normal(50 + 75 * label[:, None, None, None], 25, (n, SIZE, SIZE, 3)), 0, 255)
    return {"inputs": {"image": image.astype(np.uint8)}, "modality_mask": {"image": np.ones(n, bool)},
            "label": label, "weight": np.ones(n, np.float32)}


def _data_fn(config, split, *, global_batch_size, seed, train, start_step=0):
    rng = np.random.default_rng([seed, len(split), start_step])
    for _ in (range(start_step, 10 ** 9) if train else range(2)):
        yield _batch(rng, global_batch_size)


def test_frozen_converted_tower_stays_the_checkpoints_and_the_head_trains(tmp_path):
    from mmjax import load
    from mmjax.train import loop

    ckpt_dir = tmp_path / "clip"
    _checkpoint(ckpt_dir)
    mean, std = ImagePreprocess.from_dir(str(ckpt_dir)).mean_std
    info = {"name": "brightness", "num_classes": 3, "class_names": CLASSES, "image_norms": {"image": (mean, std)},
            "modalities": {"image": {"kind": "image", "shape": (SIZE, SIZE, 3), "dtype": "float32",
                                     "sequence": False}}}
    c = base.get_config()
    c.total_steps, c.batch_size, c.log_every, c.eval_every, c.checkpoint_every = 20, 32, 1, 0, 0
    c.tensorboard = False
    c.parallel.mode = "single"
    c.data = {"name": "brightness"}
    c.model.encoders = {"image": {"name": "pretrained", "path": str(ckpt_dir), "tower": "vision"}}
    c.model.fusion, c.model.fusion_config = "none", {}
    c.model.head_hidden = ()
    c.optim.learning_rate, c.optim.warmup_steps, c.optim.schedule = 3e-2, 1, "constant"
    c.optim.freeze = ("encoder_image_0",)
    c.init_from = {"pretrained": str(ckpt_dir), "source": "vision", "target": "encoder_image_0"}
    workdir = str(tmp_path / "run")
    loop.train_and_evaluate(c, workdir, data_fn=_data_fn, info_fn=lambda _: dict(info), console=None)

    trained = load(workdir, "latest").variables["params"]
    want = pretrained_variables(str(ckpt_dir), "vision")["params"]
    got = trained["encoder_image_0"]
    assert jax.tree.structure(got) == jax.tree.structure(want)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), got, want)
    rows = [json.loads(line) for line in open(f"{workdir}/metrics.jsonl")]
    losses = [r["loss"] for r in rows if "loss" in r]  # the train rows, one a step
    assert len(losses) == 20
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:3]), losses
