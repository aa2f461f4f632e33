"""mmjax.load / predict / export on a tiny run trained here (in-memory image, text, audio and vector data).

The reference for every probability is the evaluation path itself: the runner's
on-device image normalisation and eval-mode apply (``experiments.reports.analysis``),
on the same batch.
"""
import io
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import mmjax
from experiments.configs import base
from experiments.reports import analysis
from mmjax.data.decode import decode_image
from mmjax.data.normalize import normalize_images
from mmjax.inference import InputError, LoadError
from mmjax.train import loop

H, W, C = 8, 8, 3
MAX_LEN, LENGTH, RATE = 12, 400, 8000
NORMS = {"image": ((0.4, 0.5, 0.6), (0.2, 0.25, 0.3))}
CLASSES = ["low", "mid", "high"]
INFO = {
    "name": "tiny_mixed", "num_classes": 3, "class_names": CLASSES, "sample_rate": RATE, "image_norms": NORMS,
    "modalities": {"image": {"kind": "image", "shape": (H, W, C), "dtype": "float32", "sequence": False},
                   "text": {"kind": "text", "shape": (MAX_LEN,), "dtype": "int32", "sequence": True},
                   "audio": {"kind": "audio", "shape": (LENGTH,), "dtype": "float32", "sequence": True},
                   "v": {"kind": "vector", "shape": (3,), "dtype": "float32", "sequence": False}},
}
WORDS = ["red", "green", "blue sky", "a"]


def _batch(rng, n):
    """A batch as the data pipeline hands it over (uint8 images, byte-token text, float audio)."""
    from mmjax.data.preprocess import length_mask, tokenize_bytes

    label = rng.integers(0, 3, n).astype(np.int32)
    image = np.clip(rng.normal(60 + 60 * label[:, None, None, None], 30, (n, H, W, C)), 0, 255).astype(np.uint8)
    ids, tmask = tokenize_bytes([WORDS[i] for i in rng.integers(0, 4, n)], MAX_LEN)
    lengths = rng.integers(100, LENGTH + 1, n)
    audio = np.where(length_mask(lengths, LENGTH), rng.normal(0, 0.1, (n, LENGTH)), 0).astype(np.float32)
    present = rng.random(n) > 0.2
    return {"inputs": {"image": image, "text": ids, "audio": audio,
                       "v": rng.normal(size=(n, 3)).astype(np.float32) + label[:, None]},
            "token_mask": {"text": tmask, "audio": length_mask(lengths, LENGTH)},
            "modality_mask": {"image": np.ones(n, bool), "text": np.ones(n, bool), "audio": np.ones(n, bool),
                              "v": present},
            "label": label, "weight": np.ones(n, np.float32)}


def _data_fn(config, split, *, global_batch_size, seed, train, start_step=0):
    rng = np.random.default_rng([seed, len(split), start_step])
    steps = range(start_step, 10 ** 9) if train else range(2)
    for _ in steps:
        yield _batch(rng, global_batch_size)


def _config():
    c = base.get_config()
    c.total_steps, c.batch_size, c.log_every, c.eval_every, c.checkpoint_every = 3, 8, 1, 0, 0
    c.tensorboard = False
    c.parallel.mode = "single"
    c.optim.warmup_steps = 1
    c.data = {"name": "tiny_mixed", "modalities": {"audio": {"kind": "audio", "length": LENGTH, "scale": 32768.0}}}
    c.model.encoders = {
        "image": {"name": "resnet", "stage_sizes": (1,), "width": 4, "small_inputs": True},  # BatchNorm
        "text": {"name": "transformer", "vocab_size": 260, "hidden_dim": 8, "num_layers": 1, "num_heads": 2,
                 "mlp_dim": 16, "max_len": MAX_LEN},
        "audio": {"name": "audio_cnn", "features": (4,), "sample_rate": RATE, "n_fft": 64, "hop_length": 32,
                  "n_mels": 8},
        "v": {"name": "mlp", "features": (8,)},
    }
    c.model.fusion_config = {"out_dim": 8}
    c.model.dropout_rate = 0.5  # must be off in eval mode, or nothing below would match
    return c


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("inference") / "run")
    loop.train_and_evaluate(_config(), wd, data_fn=_data_fn, info_fn=lambda c: dict(INFO), console=None)
    return wd


@pytest.fixture(scope="module")
def loaded(run_dir):
    return mmjax.load(run_dir)


def _eval_path_probs(run_dir, batch):
    """Probabilities of ``batch`` through the runner's own placement (uint8 images normalised on
    device) and the eval report's predict function: independent of mmjax.inference."""
    import jax

    from mmjax.train import builder, evaluation, run_record

    rec = run_record.read(run_dir)
    runner = builder.build(rec.config, 3, rec.data_info)
    ckpt = builder.open_checkpoints(rec.config, run_dir, for_eval=True)
    try:
        host = runner.host_state(evaluation.restore(runner, ckpt, evaluation.selected_step(ckpt, "best"),
                                                    batch, rec.config))
    finally:
        ckpt.close()
    variables = {"params": host.params, "batch_stats": host.batch_stats}
    placed = jax.device_get(runner.put_batch({k: batch[k] for k in ("inputs", "token_mask", "modality_mask")}))
    return analysis.softmax(analysis.make_predict_fn(runner.model, jax.device_get(variables))(placed))


def test_loaded_model_has_the_contracted_attributes(loaded):
    assert loaded.class_names == CLASSES and loaded.modalities == ("audio", "image", "text", "v")
    assert loaded.step == 3 and set(loaded.variables) == {"params", "batch_stats"}
    assert loaded.config.model.encoders.v.features == (8,) and loaded.data_info["sample_rate"] == RATE
    assert type(loaded.model).__name__ == "Classifier"


def test_predict_matches_the_eval_path(loaded, run_dir):
    batch = _batch(np.random.default_rng(7), 5)
    texts = [_decode(ids) for ids in batch["inputs"]["text"]]
    waves = [a[:m.sum()] for a, m in zip(batch["inputs"]["audio"], batch["token_mask"]["audio"])]
    probs = loaded.predict({"image": batch["inputs"]["image"], "text": texts, "audio": waves,
                            "v": batch["inputs"]["v"]})
    batch["modality_mask"]["v"][:] = True  # predict marks given modalities present
    want = _eval_path_probs(run_dir, batch)
    assert probs.shape == (5, 3)
    np.testing.assert_allclose(probs, want, atol=1e-5)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    # preprocess + logits is the same path, with the images normalised on the host.
    pre = loaded.preprocess({"image": batch["inputs"]["image"], "text": texts, "audio": waves,
                             "v": batch["inputs"]["v"]})
    assert pre["inputs"]["image"].dtype == np.float32
    np.testing.assert_allclose(pre["inputs"]["image"], normalize_images(batch, NORMS)["inputs"]["image"], atol=1e-6)
    np.testing.assert_array_equal(pre["token_mask"]["audio"], batch["token_mask"]["audio"])
    np.testing.assert_allclose(analysis.softmax(loaded.logits(pre)), want, atol=1e-5)


def _decode(ids):
    from mmjax.tokenizer import ByteTokenizer

    return ByteTokenizer().decode(ids)


def test_left_out_modalities_are_masked_off(loaded, run_dir):
    batch = _batch(np.random.default_rng(3), 2)
    probs = loaded.predict({"v": batch["inputs"]["v"]})
    pre = loaded.preprocess({"v": batch["inputs"]["v"]})
    assert [bool(pre["modality_mask"][m].any()) for m in loaded.modalities] == [False, False, False, True]
    batch["inputs"] = {m: np.zeros_like(x) if m != "v" else x for m, x in batch["inputs"].items()}
    batch["modality_mask"] = {m: np.full(2, m == "v") for m in batch["modality_mask"]}
    batch["token_mask"] = {m: np.zeros_like(x) for m, x in batch["token_mask"].items()}
    np.testing.assert_allclose(probs, _eval_path_probs(run_dir, batch), atol=1e-5)
