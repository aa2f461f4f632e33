"""``python -m experiments data info`` on the tiny build."""
import argparse

from experiments.commands import data as data_cmd


def test_data_info_prints_splits_balance_and_hashes(tiny_dir, capsys):
    parser = argparse.ArgumentParser()
    data_cmd.add_parser(parser.add_subparsers())
    args = parser.parse_args(["data", "info", "av_digits/tiny", "--data_dir", tiny_dir])
    assert data_cmd.run(args) == 0
    out = capsys.readouterr().out
    assert "train: 70 examples; per class min 7 max 7" in out
    assert "test: 20 examples; per class min 2 max 2" in out
    assert "audio: audio (8000,) float32  + token_mask" in out
    import tensorflow_datasets as tfds

    recorded = tfds.builder("av_digits/tiny", data_dir=tiny_dir).info.metadata["content_sha256"]
    assert all(h in out for h in recorded.values())
