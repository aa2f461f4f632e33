"""``python -m experiments train/eval`` on the SYNTHETIC captioning experiment."""
import json
import os
import re
import sys

import numpy as np
import pytest
import sacrebleu

sys.path.insert(0, os.path.dirname(__file__))
from _cli_helper import run_cli  # noqa: E402

OVERRIDES = ["--config.total_steps=4", "--config.batch_size=8", "--config.log_every=2",
             "--config.checkpoint_every=2", "--config.data.eval_examples=12", "--config.eval.num_samples=12",
             "--config.tensorboard=False", "--config.parallel.mode=single"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("captioning"))
    assert run_cli("train", "synthetic_captioning", "--workdir", workdir, *OVERRIDES) == 0
    assert run_cli("eval", "synthetic_captioning", "--workdir", workdir, "--latest", "--config.eval.beam_size=2",
                   *OVERRIDES) == 0
    return workdir


def _samples(path):
    rows = []
    for line in open(path, encoding="utf-8"):
        m = re.match(r"\| (\d+) \| (.*) \| (.*) \| ([\d.]+) \|$", line.strip())
        if m:
            rows.append((m.group(2), m.group(3).split(" / ")))
    return rows


def test_train_logs_and_checkpoints(run):
    records = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
    train = [r for r in records if "token_accuracy" in r and "loss" in r]
    assert [r["step"] for r in train] == [2, 4]
    assert all(np.isfinite(r["loss"]) and 0 <= r["token_accuracy"] <= 1 for r in train)
    assert {"2", "4"} <= set(os.listdir(os.path.join(run, "checkpoints")))
    assert json.load(open(os.path.join(run, "results.json")))["num_examples"] == 12


def test_eval_writes_samples_and_scores_match_sacrebleu(run):
    m = json.load(open(os.path.join(run, "eval", "metrics.json")))
    assert m["decoding"].startswith("beam 2") and m["num_examples"] == 12
    rows = _samples(os.path.join(run, "eval", "samples.md"))
    assert len(rows) == 12
    # references are the synthetic captions "a <colour> <animal> and a <animal>"
    assert all(re.fullmatch(r"a \w+ \w+ and a \w+", r[0]) for _, r in rows)
    hyps = [h if h != "(empty)" else "" for h, _ in rows]
    bleu = sacrebleu.corpus_bleu(hyps, [[r[0] for _, r in rows]])
    assert m["bleu4"] == pytest.approx(bleu.score, abs=1e-6)
    assert m["exact_match"] == pytest.approx(np.mean([h == r[0] for h, (_, r) in zip(hyps, rows)]))
    assert m["cider_d"] >= 0
