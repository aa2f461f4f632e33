"""Reading built datasets without tensorflow, and TFRecord datasets converted to ArrayRecord."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from mmjax.data import convert, make_iterator

# ``import tensorflow`` fails in this process as if it were not installed. (Putting None in
# sys.modules instead makes tfds believe tensorflow is loaded, which breaks tfds itself.)
NO_TENSORFLOW = textwrap.dedent("""
    import importlib.machinery, sys

    class _NoTensorflow:
        def find_spec(self, name, path=None, target=None):
            if name == "tensorflow" or name.startswith("tensorflow."):
                return importlib.machinery.ModuleSpec(name, self)
            return None

        def create_module(self, spec):
            raise ModuleNotFoundError(f"No module named {spec.name!r}", name=spec.name)

        def exec_module(self, module):
            pass

    sys.meta_path.insert(0, _NoTensorflow())
""")


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", NO_TENSORFLOW + textwrap.dedent(code)], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out.stdout


@pytest.mark.slow
def test_trains_av_digits_without_tensorflow(tiny_dir, tmp_path):
    out = _run(f"""
        from experiments.configs import av_digits
        from mmjax.train import loop

        c = av_digits.get_config()
        c.data.name, c.data.data_dir = "av_digits/tiny", {tiny_dir!r}
        c.total_steps, c.batch_size, c.log_every, c.optim.warmup_steps = 3, 8, 1, 1
        r = loop.train_and_evaluate(c, {str(tmp_path / "run")!r}, console=None)
        loaded = [m for m, v in sys.modules.items() if v is not None and m.split(".")[0] == "tensorflow"]
        assert not loaded, loaded
        print("RESULT", r["step"], 0.0 <= r["accuracy"] <= 1.0)
    """)
    assert "RESULT 3 True" in out


def test_reader_needs_no_tensorflow(tiny_config):
    kw = dict(global_batch_size=8, seed=2, train=True, process_index=1, process_count=2)
    tiny_config.modalities.image.augment_pad = 2
    expected = next(make_iterator(tiny_config, "train", **kw))
    out = _run(f"""
        import json, ml_collections
        from mmjax.data import make_iterator
        cfg = ml_collections.ConfigDict(json.loads({tiny_config.to_json()!r}))
        b = next(make_iterator(cfg, "train", **{kw!r}))
        print(json.dumps([b["label"].tolist(), float(b["inputs"]["image"].sum()), float(b["inputs"]["audio"].sum())]))
        assert "tensorflow" not in sys.modules
    """)
    labels, image_sum, audio_sum = __import__("json").loads(out.strip().splitlines()[-1])
    assert labels == expected["label"].tolist()
    assert np.isclose(image_sum, float(expected["inputs"]["image"].sum()))
    assert np.isclose(audio_sum, float(expected["inputs"]["audio"].sum()))


def test_tfrecord_dataset_is_converted_then_read_by_index(tiny_config, tmp_path):
    pytest.importorskip("tensorflow")
    import tensorflow_datasets as tfds

    from mmjax.data import builders, source

    builders.register()
    tf_dir = str(tmp_path / "tfrecord")
    tfds.builder("av_digits/tiny", data_dir=tf_dir, file_format="tfrecord").download_and_prepare()
    # A public dataset stored as TFRecord is refused with the command that fixes it...
    cfg = tiny_config.copy_and_resolve_references()
    cfg.data_dir = tf_dir
    b = tfds.builder("av_digits/tiny", data_dir=tf_dir)
    assert not source._random_access(b)
    # ... and once converted, reading by index gives what tf.data reads from the TFRecord files.
    convert(cfg)
    assert source._random_access(source.builder(cfg))
    stored = list(b.as_dataset(split="train", shuffle_files=False).as_numpy_iterator())
    reader = source.SplitReader(cfg, "train")
    cols = reader.read(np.arange(len(stored)))
    assert len(reader) == len(stored) == 70
    assert cols["label"].tolist() == [int(e["label"]) for e in stored]
    assert all(np.array_equal(cols["image"][i], e["image"]) for i, e in enumerate(stored))
    assert all(np.array_equal(cols["audio"][i, : e["audio"].size], e["audio"]) for i, e in enumerate(stored))
    assert cols["audio__length"].tolist() == [e["audio"].size for e in stored]
