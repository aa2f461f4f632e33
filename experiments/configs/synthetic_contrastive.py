"""SYNTHETIC contrastive smoke experiment: in-memory image vectors <-> captions (CLIP loss).

Runs anywhere in seconds; used by the CLI tests. Not a benchmark.
"""
import ml_collections

from experiments.configs import base


def get_config() -> ml_collections.ConfigDict:
    c = base.get_config()
    c.description = "SYNTHETIC in-memory image vectors <-> text (CLIP); smoke test, not a benchmark"
    c.task = "contrastive"
    c.total_steps = 100
    c.batch_size = 32
    c.log_every = 20
    c.eval_every = 50
    c.checkpoint_every = 50
    c.data = ml_collections.ConfigDict({
        "name": "synthetic_multimodal", "num_classes": 4, "num_attributes": 6, "image_dim": 12,
        "max_len": 8, "noise_std": 0.1, "eval_examples": 128, "rule_seed": 0,
    })
    c.model = ml_collections.ConfigDict({
        "towers": {
            "image": {"encoder": "mlp", "features": (32, 32)},
            "text": {"encoder": "transformer", "vocab_size": 16, "hidden_dim": 32, "num_layers": 1,
                     "num_heads": 2, "mlp_dim": 64, "max_len": 8},
        },
        "embed_dim": 32, "loss": "clip", "dtype": "float32", "param_dtype": "float32",
    })
    c.eval = ml_collections.ConfigDict({"ks": (1, 5, 10), "prompts": ("a {}",), "probe_examples": 256,
                                        "probe_l2": 1e-4})
    c.optim.learning_rate = 3e-3
    c.optim.warmup_steps = 10
    return c
