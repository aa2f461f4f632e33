"""mmjax.data.records parses the features a config reads exactly as tfds's own deserialization does."""
import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from mmjax.data import records  # noqa: E402


def _features():
    return tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(6, 5, 1), encoding_format="png"),
        "photo": tfds.features.Image(shape=(4, 4, 3), encoding_format="png"),
        "audio": tfds.features.Tensor(shape=(None,), dtype=np.int16, encoding=tfds.features.Encoding.ZLIB),
        "clip": tfds.features.Tensor(shape=(2, 3, 3, 1), dtype=np.uint8, encoding=tfds.features.Encoding.ZLIB),
        "vec": tfds.features.Tensor(shape=(7,), dtype=np.float32),
        "ids": tfds.features.Tensor(shape=(2, 3), dtype=np.int32),
        "raw": tfds.features.Tensor(shape=(None, 2), dtype=np.float32, encoding=tfds.features.Encoding.BYTES),
        "label": tfds.features.ClassLabel(names=["a", "b", "c"]),
        "caption": tfds.features.Text(),
        "flag": tfds.features.Scalar(dtype=np.bool_),
        "meta": {"id": np.int64, "score": np.float32},
        "tags": tfds.features.Sequence(tfds.features.Text()),
    })


def _example(rng, i):
    return {
        "image": rng.integers(0, 256, (6, 5, 1), dtype=np.uint8),
        "photo": rng.integers(0, 256, (4, 4, 3), dtype=np.uint8),
        "audio": rng.integers(-2**15, 2**15, (int(rng.integers(0, 50)),), dtype=np.int16),
        "clip": rng.integers(0, 256, (2, 3, 3, 1), dtype=np.uint8),
        "vec": rng.standard_normal(7).astype(np.float32),
        "ids": rng.integers(-9, 9, (2, 3), dtype=np.int32),
        "raw": rng.standard_normal((int(rng.integers(1, 4)), 2)).astype(np.float32),
        "label": int(rng.integers(0, 3)),
        "caption": "".join(rng.choice(list("abc é"), int(rng.integers(0, 9)))),
        "flag": bool(i % 2),
        "meta": {"id": i, "score": float(rng.standard_normal())},
        "tags": ["x"] * int(rng.integers(0, 3)),
    }


FLAT = ["image", "photo", "audio", "clip", "vec", "ids", "raw", "label", "caption", "flag", "meta/id", "meta/score"]


def test_parsed_features_equal_tfds_deserialization():
    features = _features()
    rng = np.random.default_rng(0)
    stored = [features.serialize_example(_example(rng, i)) for i in range(12)]
    skip = {"image": tfds.decode.SkipDecoding()}

    def reference(r):
        return features.deserialize_example_np(r, decoders=skip)

    parser = records.make_parser(features, FLAT, ["image"], reference, stored[0])
    assert parser is not None
    for r in stored:
        ours, theirs = parser(r), reference(r)
        assert set(ours) == {"image", "photo", "audio", "clip", "vec", "ids", "raw", "label", "caption", "flag", "meta"}
        for path in FLAT:
            a, b = records._feature_at(ours, path), records._feature_at(theirs, path)
            assert records._same(a, b), path
        assert isinstance(ours["image"], bytes) and ours["photo"].shape == (4, 4, 3)  # kept encoded / decoded


def test_layouts_it_does_not_cover_leave_the_reader_to_tfds():
    features = _features()
    stored = features.serialize_example(_example(np.random.default_rng(1), 0))
    assert records.make_parser(features, ["tags"], [], features.deserialize_example_np, stored) is None
    assert records.make_parser(features, ["no_such"], [], features.deserialize_example_np, stored) is None


def test_a_parser_that_disagrees_with_tfds_on_the_sample_is_not_used():
    features = _features()
    stored = features.serialize_example(_example(np.random.default_rng(2), 0))

    def shifted(r):  # a reference that differs in one value
        out = features.deserialize_example_np(r)
        out["vec"] = out["vec"] + 1
        return out

    assert records.make_parser(features, ["vec", "label"], [], features.deserialize_example_np, stored) is not None
    assert records.make_parser(features, ["vec", "label"], [], shifted, stored) is None
    assert records.make_parser(features, ["vec"], [], features.deserialize_example_np, b"\xff\x00junk") is None


def test_split_reader_uses_it_and_reads_what_tfds_reads(tiny_config):
    from mmjax.data import source

    reader = source.SplitReader(tiny_config, "train")
    assert reader._parse is not None
    b = source.builder(tiny_config)
    tfds_source = b.as_data_source(split="train", decoders=source._skip_image_decoding(tiny_config))
    idx = list(range(len(reader)))
    ours = reader._examples(idx, needed_only=True)
    assert set(ours[0]) == {"image", "audio", "label"} and "speaker" in reader.raw([0])[0]
    for i in idx:
        theirs = tfds_source[i]
        for path in ("image", "audio", "label"):
            assert records._same(ours[i][path], theirs[path]), (i, path)
