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


def _eval_path_probs(run_dir, batch, which="best"):
    """Probabilities of ``batch`` through the runner's own placement (uint8 images normalised on
    device) and the eval report's predict function: independent of mmjax.inference."""
    import jax

    from mmjax.train import builder, evaluation, run_record

    rec = run_record.read(run_dir)
    runner = builder.build(rec.config, 3, rec.data_info)
    ckpt = builder.open_checkpoints(rec.config, run_dir, for_eval=True)
    try:
        host = runner.host_state(evaluation.restore(runner, ckpt, evaluation.selected_step(ckpt, which),
                                                    batch, rec.config))
    finally:
        ckpt.close()
    variables = {"params": host.params, **({"batch_stats": host.batch_stats} if host.batch_stats else {})}
    placed = jax.device_get(runner.put_batch({k: batch[k] for k in ("inputs", "token_mask", "modality_mask") if k in batch}))
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


def test_an_image_file_is_decoded_as_the_pipeline_decodes_it(loaded, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (10, 13, 3)).astype(np.uint8)  # another size than the trained 8x8
    path = str(tmp_path / "x.png")
    Image.fromarray(pixels).save(path)
    raw = loaded.preprocess({"image": path}, normalize=False)["inputs"]["image"]
    with open(path, "rb") as f:
        want = decode_image(f.read(), (H, W, C), (H, W))  # the data pipeline's decoder
    np.testing.assert_array_equal(raw, want[None])
    np.testing.assert_array_equal(raw[0], np.asarray(Image.fromarray(pixels).resize((W, H), Image.BILINEAR)))
    pre = loaded.preprocess({"image": path})
    mean, std = (np.asarray(v, np.float32) for v in NORMS["image"])
    np.testing.assert_allclose(pre["inputs"]["image"], (want[None] / np.float32(255) - mean) / std, atol=1e-6)
    assert pre["modality_mask"]["image"].tolist() == [True] and not pre["modality_mask"]["text"].any()
    np.testing.assert_allclose(loaded.predict({"image": [path, path]}), np.repeat(loaded.predict({"image": want}), 2, 0),
                               atol=1e-6)


def test_a_wav_at_another_rate_is_resampled_with_a_note(loaded, tmp_path):
    from scipy.io import wavfile

    from mmjax.data.speech import resample

    wave = (np.sin(np.arange(1000) / 7.0) * 12000).astype(np.int16)  # 1000 samples at 16 kHz
    path = str(tmp_path / "x.wav")
    wavfile.write(path, 2 * RATE, wave)
    pre = loaded.preprocess({"audio": path, "text": "green"})
    want = resample(wave / np.float32(32768), 2 * RATE, RATE)[:LENGTH]
    np.testing.assert_allclose(pre["inputs"]["audio"][0], want, atol=1e-6)
    assert pre["token_mask"]["audio"].all() and pre["modality_mask"]["audio"].tolist() == [True]
    assert any("resampled 16000 Hz -> 8000 Hz" in n for n in loaded.last_notes)
    assert any("cropped 500 samples to 400" in n for n in loaded.last_notes)
    from mmjax.data.preprocess import tokenize_bytes

    np.testing.assert_array_equal(pre["inputs"]["text"], tokenize_bytes(["green"], MAX_LEN)[0])


def test_input_errors_are_one_line_and_name_the_modality(loaded):
    with pytest.raises(InputError, match=r"unknown modality 'imgae': this model takes audio, image, text, v") as e:
        loaded.predict({"imgae": "x.png"})
    assert "\n" not in str(e.value)
    with pytest.raises(InputError, match=r"modality 'v' \(vector\): expected shape \(3,\) per example") as e:
        loaded.predict({"v": np.zeros(4, np.float32)})
    assert "\n" not in str(e.value)
    with pytest.raises(InputError, match=r"modality 'image' \(image\): no such file"):
        loaded.preprocess({"image": "/nonexistent.png"})
    with pytest.raises(InputError, match=r"different batch sizes: image 2, v 1"):
        loaded.preprocess({"image": np.zeros((2, H, W, C), np.uint8), "v": np.zeros(3)})


def test_load_refuses_a_workdir_without_a_run(tmp_path):
    with pytest.raises(LoadError, match="holds no run"):
        mmjax.load(str(tmp_path))


def test_cli_predict_prints_names_and_json(run_dir, loaded, tmp_path, capsys):
    from experiments.__main__ import main

    np.save(tmp_path / "v.npy", np.array([0.5, -1.0, 2.0], np.float32))
    args = ["predict", "--workdir", run_dir, f"v={tmp_path / 'v.npy'}", "text=blue sky"]
    assert main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    want = loaded.predict({"v": np.array([0.5, -1.0, 2.0], np.float32), "text": "blue sky"})[0]
    assert [line.split()[0] for line in lines] == [CLASSES[i] for i in np.argsort(-want, kind="stable")]
    assert float(lines[0].split()[1]) == pytest.approx(want.max(), abs=1e-4)
    assert main(args + ["--json", "--top_k", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["step"] == 3 and out["class_names"] == CLASSES and len(out["predictions"][0]["top"]) == 2
    np.testing.assert_allclose([out["predictions"][0]["probabilities"][n] for n in CLASSES], want, atol=1e-6)
    assert main(["predict", "--workdir", run_dir, "sound=x.wav"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown modality 'sound'" in err[0]


CONSUMER = textwrap.dedent("""
    import json, sys
    import jax, numpy as np

    path, data = sys.argv[1], sys.argv[2]
    doc = json.load(open(path + ".json"))
    exp = jax.export.deserialize(bytearray(open(path, "rb").read()))
    arrays = np.load(data)
    out = {}
    for size in ("2", "5"):
        batch = {}
        for d in doc["inputs"]:
            batch.setdefault(d["key"][0], {})[d["key"][1]] = arrays[size + "/" + "/".join(d["key"])]
        out[size] = np.asarray(exp.call(batch))
    np.savez(data + ".out.npz", **out)
    assert not [m for m in sys.modules if m.split(".")[0] in ("mmjax", "flax", "experiments")]
    print("consumer ok", doc["class_names"])
""")


def test_export_runs_without_mmjax_at_two_batch_sizes(run_dir, loaded, tmp_path, capsys):
    from experiments.__main__ import main

    path = str(tmp_path / "model.jaxexport")
    assert main(["export", "--workdir", run_dir, "--out", path]) == 0
    assert "to " + path in capsys.readouterr().out
    doc = json.load(open(path + ".json"))
    assert doc["class_names"] == CLASSES and doc["output"]["shape"] == ["b", 3]
    assert doc["preprocessing"]["image"]["mean"] == list(NORMS["image"][0])
    assert doc["preprocessing"]["audio"]["sample_rate"] == RATE
    by_key = {"/".join(d["key"]): d for d in doc["inputs"]}
    assert by_key["inputs/image"]["shape"] == ["b", H, W, C] and by_key["inputs/image"]["dtype"] == "uint8"
    assert by_key["token_mask/text"]["mask"] and by_key["modality_mask/v"]["shape"] == ["b"]
    assert "token_mask/v" not in by_key
    arrays, want = {}, {}
    for n in (2, 5):
        batch = _batch(np.random.default_rng(n), n)
        raw = {"image": batch["inputs"]["image"], "v": batch["inputs"]["v"],
               "text": [_decode(ids) for ids in batch["inputs"]["text"]]}  # audio left out: masked off
        want[n] = loaded.predict(raw)
        for key, x in _flat(loaded.preprocess(raw, normalize=False)):
            arrays[f"{n}/{key}"] = x
    data = str(tmp_path / "batches.npz")
    np.savez(data, **arrays)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    res = subprocess.run([sys.executable, "-c", CONSUMER, path, data], capture_output=True, text=True, timeout=120,
                         cwd=str(tmp_path), env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    got = np.load(data + ".out.npz")
    for n in (2, 5):
        np.testing.assert_allclose(got[str(n)], want[n], atol=1e-5)


def _flat(batch):
    for group, d in batch.items():
        for m, x in d.items():
            yield f"{group}/{m}", x


def test_the_synthetic_experiment_predicts_as_it_evaluates(tmp_path, capsys):
    """The SYNTHETIC experiment's record (vector modalities named by ``dims``), trained by the CLI."""
    from experiments.__main__ import main
    from mmjax.data import synthetic

    wd = str(tmp_path / "synthetic")
    tiny = ["--config.total_steps=3", "--config.eval_every=0", "--config.checkpoint_every=0",
            "--config.batch_size=8", "--config.data.eval_examples=8", "--config.parallel.mode=single",
            "--config.tensorboard=false", "--config.model.head_hidden=()"]
    assert main(["train", "synthetic", "--workdir", wd, *tiny]) == 0
    model = mmjax.load(wd, "latest")
    assert model.modalities == ("a", "b") and model.class_names == ["0", "1", "2"]
    batch = next(synthetic.make_iterator(model.config.data, "test", global_batch_size=8, seed=0, train=False))
    want = _eval_path_probs(wd, analysis.complete_masks(batch), "latest")
    np.testing.assert_allclose(model.predict(batch["inputs"]), want, atol=1e-5)
    capsys.readouterr()
    a, b = batch["inputs"]["a"][0], batch["inputs"]["b"][0]
    assert main(["predict", "--workdir", wd, "--latest", "--json", "a=" + ",".join(map(str, a)),
                 "b=" + ",".join(map(str, b))]) == 0
    out = json.loads(capsys.readouterr().out)["predictions"][0]["probabilities"]
    np.testing.assert_allclose([out[n] for n in model.class_names], want[0], atol=1e-5)
