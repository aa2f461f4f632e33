"""``coco_captions`` (tfds) train + eval through the CLI, offline with tfds.testing.mock_data."""
import json
import os
import re

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from experiments.__main__ import main  # noqa: E402

TINY = ["--config.model.encoder.stage_sizes=(1,1)", "--config.model.encoder.width=4",
        "--config.model.encoder.small_inputs=True", "--config.model.width=16", "--config.model.num_layers=1",
        "--config.model.num_heads=2", "--config.model.mlp_dim=32", "--config.model.max_len=16",
        "--config.model.dtype=float32", "--config.data.modalities.image.size=(16,16)",
        "--config.data.modalities.text.max_len=16"]
RUN = ["--config.total_steps=2", "--config.batch_size=4", "--config.log_every=1", "--config.eval_every=0",
       "--config.eval_steps=1", "--config.checkpoint_every=2", "--config.parallel.mode=single",
       "--config.data.prefetch=0", "--config.tensorboard=False", "--config.eval.beam_size=2",
       "--config.eval.num_samples=4"]


def test_coco_captions_train_and_eval_mock(tmp_path):
    wd = str(tmp_path / "run")
    common = [f"--config.data.data_dir={tmp_path / 'data'}", *RUN, *TINY]
    with tfds.testing.mock_data(num_examples=8):
        assert main(["train", "coco_captions", "--workdir", wd, *common]) == 0
        assert main(["eval", "coco_captions", "--workdir", wd, "--latest", *common]) == 0
    records = [json.loads(line) for line in open(os.path.join(wd, "metrics.jsonl"))]
    losses = [r["loss"] for r in records if "loss" in r and "token_accuracy" in r]
    # an untrained decoder over the 260 byte ids starts near log(260) = 5.56 nats per token
    assert len(losses) == 2 and np.isfinite(losses).all() and 4.5 < losses[0] < 6.5
    m = json.load(open(os.path.join(wd, "eval", "metrics.json")))
    assert m["decoding"].startswith("beam 2") and m["eval_split"] == "test"  # selected on val, reported on test
    assert 0 <= m["bleu4"] <= 100 and m["cider_d"] >= 0
    samples = open(os.path.join(wd, "eval", "samples.md"), encoding="utf-8").read()
    rows = [line.split(" | ") for line in samples.splitlines() if re.match(r"\| \d+ \|", line)]
    assert len(rows) == 4
    # references decode with the pipeline's byte tokenizer back to the mock captions' text (letters and
    # spaces), not to lists of ids
    refs = [r[2] for r in rows]
    assert all(re.fullmatch(r"[a-z $]+", ref) and not re.search(r"\d", ref) for ref in refs), refs
