"""``python -m experiments train/eval`` on the SYNTHETIC contrastive experiment, and
sharded training with global-batch negatives on 4 CPU devices."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import config_utils
from mmjax.data import factory
from mmjax.train import builder, init_from
from mmjax.train.checkpoint import CheckpointError, load_params

sys.path.insert(0, os.path.dirname(__file__))
from _cli_helper import run_cli  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OVERRIDES = ["--config.total_steps=4", "--config.batch_size=8", "--config.log_every=2", "--config.eval_every=0",
             "--config.checkpoint_every=2", "--config.data.eval_examples=20", "--config.eval.probe_examples=16",
             "--config.tensorboard=False", "--config.parallel.mode=single"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("contrastive"))
    assert run_cli("train", "synthetic_contrastive", "--workdir", workdir, *OVERRIDES) == 0
    assert run_cli("eval", "synthetic_contrastive", "--workdir", workdir, "--latest", *OVERRIDES) == 0
    return workdir


def test_train_writes_logs_checkpoints_results(run):
    records = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
    train = [r for r in records if "loss" in r]
    assert [r["step"] for r in train] == [2, 4]
    assert all(np.isfinite(r["loss"]) and "scale/image_text" in r for r in train)
    assert any("eval_mean_R@1" in r for r in records)
    assert {"2", "4"} <= set(os.listdir(os.path.join(run, "checkpoints")))
    results = json.load(open(os.path.join(run, "results.json")))
    assert results["step"] == 4 and results["num_examples"] == 20


def test_eval_metrics_match_numpy_recall(run):
    """metrics.json recalls == recall@K recomputed with numpy from the checkpoint's embeddings."""
    m = json.load(open(os.path.join(run, "eval", "metrics.json")))
    for key in ("retrieval/image_to_text/R@1", "retrieval/text_to_image/R@10", "zero_shot/image/accuracy",
                "linear_probe/image/accuracy", "linear_probe/text/accuracy", "mean_R@1"):
        assert 0.0 <= m[key] <= 1.0, key
    config = config_utils.load_config("synthetic_contrastive")
    config_utils.apply_overrides(config, [tuple(o[len("--config."):].split("=", 1)) for o in OVERRIDES])
    info = factory.data_info(config)
    runner = builder.build(config, info["num_classes"], info)
    params = load_params(run)
    emb, labels = {}, []
    for batch in factory.make_data(config, "test", global_batch_size=8, seed=0, train=False):
        keep = batch["weight"] > 0
        out = runner.model.apply({"params": params}, jax.tree.map(jnp.asarray, batch))
        for k, v in out.items():
            emb.setdefault(k, []).append(np.asarray(v)[keep])
        labels.append(batch["label"][keep])
    img, txt = np.concatenate(emb["image"]), np.concatenate(emb["text"])
    assert img.shape == (20, 32)
    scores = img.astype(np.float64) @ txt.T.astype(np.float64)
    for name, s in (("image_to_text", scores), ("text_to_image", scores.T)):
        diag = np.diag(s)
        # pessimistic rank: wrong keys scoring >= the right one
        ranks = (s >= diag[:, None]).sum(1) - 1
        for k in (1, 5, 10):
            assert m[f"retrieval/{name}/R@{k}"] == pytest.approx(np.mean(ranks < k), abs=1e-6)
        # class-level: the best key of the query's class
        lab = np.concatenate(labels)
        same = lab[:, None] == lab[None, :]
        best = np.where(same, s, -np.inf).max(1)
        class_ranks = ((s >= best[:, None]) & ~same).sum(1)
        for k in (1, 5, 10):
            assert m[f"class_retrieval/{name}/R@{k}"] == pytest.approx(np.mean(class_ranks < k), abs=1e-6)


def _classifier_config(init_from_path: str):
    """A classifier over the synthetic_contrastive data whose encoders are its towers' encoders."""
    from experiments.configs import base

    towers = config_utils.load_config("synthetic_contrastive")
    config_utils.apply_overrides(towers, [tuple(o[len("--config."):].split("=", 1)) for o in OVERRIDES])
    c = base.get_config()
    c.data = towers.data
    encoders = {}
    for m, t in towers.model.towers.items():
        t = dict(t)
        encoders[m] = {"name": t.pop("encoder"), **t}
    c.model.encoders = encoders
    c.model.fusion_config = {"out_dim": 8}
    c.init_from.path = init_from_path
    c.parallel.mode = "single"
    return c


def test_classifier_fine_tunes_from_contrastive_towers(run):
    """init_from.path=<contrastive workdir> with no source/target copies encoders_<m> -> encoder_<m>_0."""
    c = _classifier_config(run)
    info = factory.data_info(c)
    runner = builder.build(c, info["num_classes"], info)
    batch = next(factory.make_data(c, "train", global_batch_size=8, seed=0, train=True))
    fresh = runner.create_state(batch, jax.random.PRNGKey(1))
    said = []
    state = init_from.apply_init_from(runner, fresh, dict(c.init_from), say=said.append)
    loaded = load_params(run)
    for m in ("image", "text"):
        jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, state.params[f"encoder_{m}_0"]),
                     loaded[f"encoders_{m}"])
    assert "encoder_image_0 <- encoders_image" in said[0] and "encoder_text_0 <- encoders_text" in said[0]
    # the fusion and head keep their fresh initialisation
    np.testing.assert_array_equal(np.asarray(state.params["head"]["out"]["kernel"]),
                                  np.asarray(fresh.params["head"]["out"]["kernel"]))
    # explicit comma-separated lists do the same for one tower, and a length mismatch is named
    one = init_from.apply_init_from(runner, fresh, {"path": run, "source": "encoders_text", "target": "encoder_text_0"})
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, one.params["encoder_text_0"]),
                 loaded["encoders_text"])
    assert not np.array_equal(np.asarray(one.params["encoder_image_0"]["dense_0"]["kernel"]),
                              loaded["encoders_image"]["dense_0"]["kernel"])
    with pytest.raises(CheckpointError, match="one target per source"):
        init_from.apply_init_from(runner, fresh, {"path": run, "source": "encoders_text,encoders_image",
                                             "target": "encoder_text_0"})


SHARDED_CHILD = r"""
import json, sys
import jax, numpy as np
from experiments import config_utils
from mmjax.data import factory
from mmjax.train import builder
assert jax.device_count() == 4
out = {}
for mode in ("single", "sharded"):
    c = config_utils.load_config("synthetic_contrastive")
    c.parallel.mode = mode
    c.batch_size = 8
    c.model.loss = sys.argv[1]
    # A GRU text tower: the shared transformer layers' DenseGeneral kernels cannot be
    # initialised under a mesh yet (their 3-axis logical names meet the flat init shape).
    c.model.towers.text = {"encoder": "gru", "vocab_size": 16, "embed_dim": 16, "hidden_dim": 32}
    info = factory.data_info(c)
    runner = builder.build(c, info["num_classes"], info)
    it = factory.make_data(c, "train", global_batch_size=8, seed=0, train=True)
    batch = next(it)
    state = runner.create_state(batch, jax.random.PRNGKey(0))
    losses = []
    for _ in range(3):  # step 1 has learning rate 0 (warmup), later steps check the updates
        state, m = runner.train_step(state, runner.put_batch(batch))
        losses.append(runner.train_metrics(m)["loss"])
    out[mode] = losses
print(json.dumps(out))
"""


@pytest.mark.parametrize("loss", ["clip", pytest.param("siglip", marks=pytest.mark.slow)])
def test_sharded_global_negatives_match_single_device(loss):
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=1")
    r = subprocess.run([sys.executable, "-c", SHARDED_CHILD, loss], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    # Same params, same global batch -> same loss at every step.
    np.testing.assert_allclose(out["sharded"], out["single"], rtol=2e-5, atol=2e-6)
    # Per-device negatives (2 examples each) would give a loss near log 2; the global batch of 8 gives ~log 8.
    assert out["single"][0] > 1.0 if loss == "clip" else True
