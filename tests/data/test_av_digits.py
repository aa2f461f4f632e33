"""av_digits: the recipe (no tensorflow) and the built tfds dataset."""
import hashlib
import subprocess
import sys

import numpy as np
import pytest

from mmjax.data.builders import av_digits_gen as gen


def _labels():
    # The real layout of mnist_5k: 500 per class, sorted by class.
    return np.repeat(np.arange(10), 500)


def test_plan_counts_balance_and_disjoint_images():
    plans = gen.plan(_labels(), 500, seed=0)
    assert {s: len(v) for s, v in plans.items()} == {"train": 3500, "validation": 500, "test": 1000}
    for split, exs in plans.items():
        counts = np.bincount([e.label for e in exs], minlength=10)
        assert len(set(counts)) == 1, (split, counts)
        assert [e.id for e in exs] == list(range(len(exs)))
        assert all(_labels()[e.image_id] == e.label for e in exs)
    ids = {s: {e.image_id for e in v} for s, v in plans.items()}
    assert not ids["train"] & ids["test"] and not ids["train"] & ids["validation"] and not ids["test"] & ids["validation"]


def test_plan_speakers_are_disjoint_and_seeded():
    plans = gen.plan(_labels(), 500, seed=0)
    spk = {s: {e.speaker for e in v} for s, v in plans.items()}
    assert not spk["train"] & spk["test"] and not spk["train"] & spk["validation"] and not spk["validation"] & spk["test"]
    assert plans == gen.plan(_labels(), 500, seed=0)
    assert plans != gen.plan(_labels(), 500, seed=1)


def test_plan_rejects_bad_size():
    with pytest.raises(ValueError, match="examples_per_class"):
        gen.plan(_labels(), 501, seed=0)


def test_tiny_build_counts_shapes_balance(tiny_dir):
    import tensorflow_datasets as tfds

    b = tfds.builder("av_digits/tiny", data_dir=tiny_dir)
    assert {k: v.num_examples for k, v in b.info.splits.items()} == {"train": 70, "validation": 10, "test": 20}
    assert b.info.file_format.value == "array_record"  # random access, read without tensorflow
    seen = {}
    for split, per_class in (("train", 7), ("validation", 1), ("test", 2)):
        source = b.as_data_source(split=split)
        exs = [source[i] for i in range(len(source))]
        assert np.bincount([e["label"] for e in exs], minlength=10).tolist() == [per_class] * 10
        h = hashlib.sha256()
        for i, e in enumerate(exs):
            assert e["id"] == i and e["image"].shape == (28, 28, 1) and e["image"].dtype == np.uint8
            assert e["audio"].dtype == np.int16 and 0 < e["audio"].size <= 8000
            gen.example_hash_update(h, e["image"], e["audio"], e["label"])
        # The hash recorded at build time is the hash of what is stored, in stored order.
        assert b.info.metadata["content_sha256"][split] == h.hexdigest()
        seen[split] = {hashlib.sha1(e["image"].tobytes()).hexdigest() for e in exs}, {
            hashlib.sha1(e["audio"].tobytes()).hexdigest() for e in exs
        }
    for a, c in (("train", "test"), ("train", "validation"), ("validation", "test")):
        assert not seen[a][0] & seen[c][0], f"an image is in both {a} and {c}"
        assert not seen[a][1] & seen[c][1], f"a clip is in both {a} and {c}"


_HASH_SCRIPT = """
import hashlib
from mmjax.data.builders import av_digits_gen as gen
images, labels = gen.load_mnist_5k()
plans = gen.plan(labels, 5, seed=3)
clips = gen.ClipCache()
for split in gen.SPLITS:
    h = hashlib.sha256()
    for _, ex in gen.generate(split, plans[split], images, clips):
        gen.example_hash_update(h, ex["image"], ex["audio"], ex["label"])
    print(split, h.hexdigest())
"""


@pytest.mark.slow
def test_same_seed_same_content_hash_across_processes():
    pytest.importorskip("espeakng_loader")
    pytest.importorskip("mlxtend")
    outs = [
        subprocess.run([sys.executable, "-c", _HASH_SCRIPT], capture_output=True, text=True, check=True).stdout
        for _ in range(2)
    ]
    assert outs[0] == outs[1] and len(outs[0].split()) == 6
