"""mmjax.load / preprocess / predict on the tiny run (conftest.py), against the evaluation path:
the runner's on-device image normalisation and the eval report's eval-mode apply, on the same batch."""
import os
import sys

import numpy as np
import pytest

import mmjax
from experiments.reports import analysis
from mmjax.data.decode import decode_image
from mmjax.data.normalize import normalize_images
from mmjax.inference import InputError, LoadError

sys.path.insert(0, os.path.dirname(__file__))
import _tiny_run as tr  # noqa: E402


def test_loaded_model_has_the_contracted_attributes(loaded):
    assert loaded.class_names == tr.CLASSES and loaded.modalities == ("audio", "image", "text", "v")
    assert loaded.step == 3 and set(loaded.variables) == {"params", "batch_stats"}
    assert loaded.config.model.encoders.v.features == (8,) and loaded.data_info["sample_rate"] == tr.RATE
    assert type(loaded.model).__name__ == "Classifier"


def test_predict_matches_the_eval_path(loaded, run_dir):
    batch = tr.batch(np.random.default_rng(7), 5)
    texts = [tr.decode(ids) for ids in batch["inputs"]["text"]]
    waves = [a[:m.sum()] for a, m in zip(batch["inputs"]["audio"], batch["token_mask"]["audio"])]
    probs = loaded.predict({"image": batch["inputs"]["image"], "text": texts, "audio": waves,
                            "v": batch["inputs"]["v"]})
    batch["modality_mask"]["v"][:] = True  # predict marks given modalities present
    want = tr.eval_path_probs(run_dir, batch)
    assert probs.shape == (5, 3)
    np.testing.assert_allclose(probs, want, atol=1e-5)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    # preprocess + logits is the same path, with the images normalised on the host.
    pre = loaded.preprocess({"image": batch["inputs"]["image"], "text": texts, "audio": waves,
                             "v": batch["inputs"]["v"]})
    assert pre["inputs"]["image"].dtype == np.float32
    np.testing.assert_allclose(pre["inputs"]["image"], normalize_images(batch, tr.NORMS)["inputs"]["image"], atol=1e-6)
    np.testing.assert_array_equal(pre["token_mask"]["audio"], batch["token_mask"]["audio"])
    np.testing.assert_allclose(analysis.softmax(loaded.logits(pre)), want, atol=1e-5)


def test_left_out_modalities_are_masked_off(loaded, run_dir):
    batch = tr.batch(np.random.default_rng(3), 2)
    probs = loaded.predict({"v": batch["inputs"]["v"]})
    pre = loaded.preprocess({"v": batch["inputs"]["v"]})
    assert [bool(pre["modality_mask"][m].any()) for m in loaded.modalities] == [False, False, False, True]
    batch["inputs"] = {m: np.zeros_like(x) if m != "v" else x for m, x in batch["inputs"].items()}
    batch["modality_mask"] = {m: np.full(2, m == "v") for m in batch["modality_mask"]}
    batch["token_mask"] = {m: np.zeros_like(x) for m, x in batch["token_mask"].items()}
    np.testing.assert_allclose(probs, tr.eval_path_probs(run_dir, batch), atol=1e-5)


def test_an_image_file_is_decoded_as_the_pipeline_decodes_it(loaded, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (10, 13, 3)).astype(np.uint8)  # another size than the trained 8x8
    path = str(tmp_path / "x.png")
    Image.fromarray(pixels).save(path)
    raw = loaded.preprocess({"image": path}, normalize=False)["inputs"]["image"]
    with open(path, "rb") as f:
        want = decode_image(f.read(), (tr.H, tr.W, tr.C), (tr.H, tr.W))  # the data pipeline's decoder
    np.testing.assert_array_equal(raw, want[None])
    np.testing.assert_array_equal(raw[0], np.asarray(Image.fromarray(pixels).resize((tr.W, tr.H), Image.BILINEAR)))
    pre = loaded.preprocess({"image": path})
    mean, std = (np.asarray(v, np.float32) for v in tr.NORMS["image"])
    np.testing.assert_allclose(pre["inputs"]["image"], (want[None] / np.float32(255) - mean) / std, atol=1e-6)
    assert pre["modality_mask"]["image"].tolist() == [True] and not pre["modality_mask"]["text"].any()
    one = loaded.predict({"image": want})  # the decoded uint8 array itself
    np.testing.assert_allclose(loaded.predict({"image": [path, path]}), np.repeat(one, 2, 0), atol=1e-6)


def test_a_wav_at_another_rate_is_resampled_with_a_note(loaded, tmp_path):
    from scipy.io import wavfile

    from mmjax.data.speech import resample

    wave = (np.sin(np.arange(1000) / 7.0) * 12000).astype(np.int16)  # 1000 samples at 16 kHz
    path = str(tmp_path / "x.wav")
    wavfile.write(path, 2 * tr.RATE, wave)
    pre = loaded.preprocess({"audio": path, "text": "green"})
    want = resample(wave / np.float32(32768), 2 * tr.RATE, tr.RATE)[:tr.LENGTH]
    np.testing.assert_allclose(pre["inputs"]["audio"][0], want, atol=1e-6)
    assert pre["token_mask"]["audio"].all() and pre["modality_mask"]["audio"].tolist() == [True]
    assert any("resampled 16000 Hz -> 8000 Hz" in n for n in loaded.last_notes)
    assert any("cropped 500 samples to 400" in n for n in loaded.last_notes)
    from mmjax.data.preprocess import tokenize_bytes

    np.testing.assert_array_equal(pre["inputs"]["text"], tokenize_bytes(["green"], tr.MAX_LEN)[0])


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
        loaded.preprocess({"image": np.zeros((2, tr.H, tr.W, tr.C), np.uint8), "v": np.zeros(3)})


def test_load_refuses_a_workdir_without_a_run(tmp_path):
    with pytest.raises(LoadError, match="holds no run"):
        mmjax.load(str(tmp_path))
