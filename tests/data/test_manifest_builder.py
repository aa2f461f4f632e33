"""``data build --from manifest.csv``: your own images, WAV clips, texts and vectors as a tfds dataset.

A tiny dataset is generated in tmp_path (PNG / JPEG images made with numpy and PIL,
WAV clips at 8 and 16 kHz written with the stdlib ``wave`` module, texts, ``.npy``
vectors), built through the CLI entry, read back through mmjax's reader and compared
with the source files decoded directly; then the written config trains a few steps.
"""
import csv
import hashlib
import json
import os
import wave

import numpy as np
import pytest

pytest.importorskip("tensorflow")
from PIL import Image  # noqa: E402

from experiments.__main__ import main  # noqa: E402

CLASSES = ("circle", "cross", "square")  # sorted: the class ids are 0, 1, 2
ROWS = 30
TONES = {"circle": 440.0, "cross": 660.0, "square": 880.0}


def _wave_samples(freq: float, rate: int, n: int) -> np.ndarray:
    return np.round(8000 * np.sin(2 * np.pi * freq * np.arange(n) / rate)).astype(np.int16)


def _write_wav(path, x: np.ndarray, rate: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(x.astype("<i2").tobytes())


def _make_files(root, rows: int = ROWS):
    """Writes images/, audio/, vectors/ and manifest.csv under ``root`` -> the manifest rows."""
    rng = np.random.default_rng(0)
    for sub in ("images", "audio", "vectors"):
        os.makedirs(root / sub, exist_ok=True)
    out = []
    for i in range(rows):
        label = CLASSES[i % 3]
        size = (20, 24) if i in (5, 11) else (16, 16)  # two images of another size: resized
        img = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
        ext = ".jpg" if i == 7 else ".png"
        Image.fromarray(img).save(root / "images" / f"{i}{ext}")
        rate = 8000 if i % 2 == 0 else 16000  # the first clip is 8 kHz: every 16 kHz clip is resampled
        n = int(rate * (0.2 + 0.01 * (i % 5)))
        _write_wav(root / "audio" / f"{i}.wav", _wave_samples(TONES[label], rate, n), rate)
        np.save(root / "vectors" / f"{i}.npy", rng.normal(size=4).astype(np.float32))
        out.append({"image": f"images/{i}{ext}", "sound": f"audio/{i}.wav",
                    "caption": f"a {label} n°{i}", "emb": f"vectors/{i}.npy", "label": label})
    with open(root / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(out[0]))
        writer.writeheader()
        writer.writerows(out)
    return out


def _expected_split(row) -> str:
    """The documented rule: sha256 of the row's values in column order, joined by U+001F, mod 10."""
    text = "\x1f".join(row[c] for c in ("image", "sound", "caption", "emb", "label"))
    bucket = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") % 10
    return "train" if bucket < 8 else ("validation" if bucket == 8 else "test")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(root, data_dir, rows, config path, stdout of the build) of one build of the generated manifest."""
    root = tmp_path_factory.mktemp("my_files")
    rows = _make_files(root)
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["data", "build", "--from", str(root / "manifest.csv"), "--name", "my_data",
                     "--data_dir", data_dir]) == 0
    return root, data_dir, rows, str(root / "my_data_config.py"), buf.getvalue()


def test_build_prints_inference_resizing_and_resampling(built):
    _, _, _, config_path, out = built
    assert "modalities inferred from the first row" in out
    assert "image=image:image, sound=sound:audio, caption=caption:text, emb=emb:vector" in out
    assert "image: 2 of 30 images are not 16x16 (first: row 6, 20x24); resized to 16x16" in out
    assert "sound: 15 of 30 clips are not at 8000 Hz (first: row 2, 16000 Hz); resampled to 8000 Hz" in out
    assert "no 'split' column" in out
    assert os.path.isfile(config_path) and f"training config: {config_path}" in out


def _read_split(config_path, split):
    from experiments import config_utils
    from mmjax.data.source import SplitReader

    cfg = config_utils.load_config(config_path).data
    cfg.prefetch = 0
    reader = SplitReader(cfg, split)
    idx = list(range(len(reader)))
    return reader.raw(idx), reader.read(idx)


def test_examples_read_back_equal_the_source_files(built):
    root, _, rows, config_path, _ = built
    seen = []
    for split in ("train", "validation", "test"):
        want = [i + 1 for i, r in enumerate(rows) if _expected_split(r) == split]
        if not want:
            continue
        raw, cols = _read_split(config_path, split)
        got_rows = [int(ex["row"]) for ex in raw]
        assert sorted(got_rows) == want
        seen += got_rows
        for k, (ex, r) in enumerate(zip(raw, got_rows)):
            src = rows[r - 1]
            assert cols["label"][k] == CLASSES.index(src["label"])
            img = Image.open(root / src["image"]).convert("RGB")
            if img.size != (16, 16):
                img = img.resize((16, 16), Image.BILINEAR)
            np.testing.assert_array_equal(cols["image"][k], np.asarray(img))
            assert ex["caption"].decode() == src["caption"]
            np.testing.assert_array_equal(cols["emb"][k], np.load(root / src["emb"]))
            with wave.open(str(root / src["sound"])) as w:
                rate, source = w.getframerate(), np.frombuffer(w.readframes(w.getnframes()), "<i2")
            n = int(cols["sound__length"][k])
            assert n == round(len(source) * 8000 / rate)
            if rate == 8000:
                np.testing.assert_array_equal(cols["sound"][k, :n], source)
            else:  # resampled: the same tone sampled at 8 kHz, away from the clip's edges
                ref = _wave_samples(TONES[src["label"]], 8000, n)
                np.testing.assert_allclose(cols["sound"][k, 32:n - 32], ref[32:n - 32], atol=2)
    assert sorted(seen) == list(range(1, ROWS + 1))


def test_dataset_info_and_info_command(built, capsys):
    _, data_dir, _, _, _ = built
    from mmjax.data import dataset_info
    from mmjax.data.builders import manifest_gen

    info = dataset_info(manifest_gen.recorded_data_config("my_data", data_dir))
    assert info.sample_rate == 8000 and info.class_names == list(CLASSES)
    assert info.modalities["image"].shape == (16, 16, 3) and info.modalities["emb"].shape == (4,)
    assert main(["data", "info", "my_data", "--data_dir", data_dir]) == 0
    out = capsys.readouterr().out
    assert f"dataset: my_data  in {data_dir}/my_data/1.0.0" in out
    assert "sound: audio (1920,) float32  + token_mask" in out  # the longest clip: 0.24 s at 8 kHz


def test_resample_matches_the_tone_sampled_at_the_new_rate():
    from mmjax.data.builders.manifest_files import resample

    for rate_in, rate_out in ((16000, 8000), (8000, 16000), (44100, 16000)):
        x = 8000 * np.sin(2 * np.pi * 440.0 * np.arange(rate_in // 4) / rate_in)
        y = resample(x, rate_in, rate_out)
        ref = 8000 * np.sin(2 * np.pi * 440.0 * np.arange(len(y)) / rate_out)
        assert len(y) == round(len(x) * rate_out / rate_in)
        np.testing.assert_allclose(y[64:-64], ref[64:-64], atol=1)  # 1/8000 of the amplitude
    above = 8000 * np.sin(2 * np.pi * 6000.0 * np.arange(4000) / 16000)  # above the new Nyquist frequency
    assert np.abs(resample(above, 16000, 8000)[64:-64]).max() < 2  # filtered out, not aliased to 2 kHz


def _error_of(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("change, flags, expected", [
    (lambda rows: rows[2].update(image="images/missing.png"), [],
     "manifest.csv row 3 column 'image': file {root}/images/missing.png does not exist"),
    (None, ["--modality", "image=image:image", "--modality", "caption=txt:text"],
     "--modality caption=txt:text: no column 'txt' in {root}/manifest.csv (columns: image, sound, caption, emb, label)"),
    (lambda rows: rows[4].update(label=""), [], "manifest.csv row 5 column 'label': empty label"),
    (lambda rows: rows[1].update(sound="audio/1.mp3"), [], "manifest.csv row 2 column 'sound': unknown extension '.mp3'"),
    (lambda rows: rows[3].update(image="vectors/3.npy"), [], "row 4 column 'image': unknown extension '.npy' for image"),
])
def test_one_line_errors_name_row_column_and_problem(tmp_path, capsys, change, flags, expected):
    rows = _make_files(tmp_path, rows=6)
    if change:
        change(rows)
        with open(tmp_path / "manifest.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    err = _error_of(capsys, ["data", "build", "--from", str(tmp_path / "manifest.csv"), "--name", "bad_data",
                             "--data_dir", str(tmp_path / "tfds")] + flags)
    assert expected.format(root=tmp_path) in err
    assert not os.path.exists(tmp_path / "tfds" / "bad_data")  # nothing written


def test_unreadable_image_and_existing_dataset_are_refused(built, tmp_path, capsys):
    rows = _make_files(tmp_path, rows=3)
    with open(tmp_path / "manifest.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    (tmp_path / "images" / "1.png").write_bytes(b"\x89PNG not really")
    err = _error_of(capsys, ["data", "build", "--from", str(tmp_path / "manifest.jsonl"), "--name", "bad_data",
                             "--data_dir", str(tmp_path / "tfds")])
    assert f"manifest.jsonl row 2 column 'image': unreadable image {tmp_path}/images/1.png" in err
    root, data_dir, _, _, _ = built
    err = _error_of(capsys, ["data", "build", "--from", str(root / "manifest.csv"), "--name", "my_data",
                             "--data_dir", data_dir, "--config_out", str(tmp_path / "c.py")])
    assert "dataset 'my_data' already exists" in err and "--overwrite" in err


def test_the_written_config_trains(built, tmp_path):
    _, _, _, config_path, _ = built
    workdir = tmp_path / "run"
    assert main(["train", config_path, "--workdir", str(workdir), "--config.total_steps=3",
                 "--config.batch_size=8", "--config.log_every=1", "--config.data.prefetch=0",
                 "--config.tensorboard=False"]) == 0
    results = json.loads((workdir / "results.json").read_text())
    assert results, "results.json is empty"


def test_reading_needs_no_tensorflow(built):
    from tests.data.test_tensorflow_free import NO_TENSORFLOW, _run

    _, _, _, config_path, _ = built
    out = _run(NO_TENSORFLOW + f"""
from experiments import config_utils
from mmjax.data import dataset_info
from mmjax.data.source import SplitReader

cfg = config_utils.load_config({config_path!r}).data
cols = SplitReader(cfg, "train").read([0, 1])
assert not [m for m, v in sys.modules.items() if v is not None and m.split(".")[0] == "tensorflow"]
print("RESULT", cols["image"].shape, cols["sound"].shape, dataset_info(cfg).sample_rate)
""")
    assert "RESULT (2, 16, 16, 3) (2, 1920) 8000" in out


def test_chosen_modality_size_and_overwrite(tmp_path, capsys):
    _make_files(tmp_path, rows=8)
    argv = ["data", "build", "--from", str(tmp_path / "manifest.csv"), "--name", "one_modality",
            "--data_dir", str(tmp_path / "tfds"), "--modality", "picture=image:image", "--image_size", "8,12"]
    assert main(argv) == 0
    assert main(argv + ["--overwrite"]) == 0  # the dataset and its config are written again
    out = capsys.readouterr().out
    assert "modalities inferred" not in out and "8 of 8 images are not 8x12" in out
    from experiments import config_utils
    from mmjax.data import dataset_info

    c = config_utils.load_config(str(tmp_path / "one_modality_config.py"))
    assert c.model.fusion == "none" and list(c.model.encoders) == ["picture"]
    assert dataset_info(c.data).modalities["picture"].shape == (8, 12, 3)
