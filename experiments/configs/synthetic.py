"""SYNTHETIC smoke experiment: two in-memory vector modalities, label depends on both.

Runs anywhere in seconds; used by the CLI tests. Not a benchmark.
"""
import ml_collections

from experiments.configs import base


def get_config() -> ml_collections.ConfigDict:
    c = base.get_config()
    c.description = "SYNTHETIC in-memory data (two vector modalities); smoke test, not a benchmark"
    c.total_steps = 200
    c.batch_size = 32
    c.log_every = 20
    c.eval_every = 100
    c.checkpoint_every = 100
    c.data = ml_collections.ConfigDict({
        "name": "synthetic", "num_classes": 3, "dims": {"a": 6, "b": 4},
        "eval_examples": 256, "label_noise": 0.0, "missing_rate": 0.0, "rule_seed": 0,
    })
    c.model.encoders = ml_collections.ConfigDict({
        "a": {"name": "mlp", "features": (32, 16)},
        "b": {"name": "mlp", "features": (32, 16)},
    })
    c.model.fusion_config = ml_collections.ConfigDict({"out_dim": 32})
    c.model.head_hidden = (32,)
    c.optim.learning_rate = 3e-3
    c.optim.warmup_steps = 10
    return c
