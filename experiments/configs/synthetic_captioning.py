"""SYNTHETIC captioning smoke experiment: in-memory image vectors -> "a <colour> <animal> and a <animal>".

Runs anywhere in seconds; used by the CLI tests. Not a benchmark.
"""
import ml_collections

from experiments.configs import base


def get_config() -> ml_collections.ConfigDict:
    c = base.get_config()
    c.description = "SYNTHETIC in-memory image vectors -> 6-word captions (transformer decoder); smoke test"
    c.task = "captioning"
    c.total_steps = 150
    c.batch_size = 32
    c.log_every = 25
    c.eval_every = 0
    c.checkpoint_every = 75
    c.data = ml_collections.ConfigDict({
        "name": "synthetic_multimodal", "num_classes": 4, "num_attributes": 6, "image_dim": 12,
        "max_len": 8, "noise_std": 0.1, "eval_examples": 64, "rule_seed": 0,
    })
    c.model = ml_collections.ConfigDict({
        "encoder": {"encoder": "mlp", "features": (64, 64)},
        "source": "image", "target": "text", "decoder": "transformer",
        "width": 32, "num_layers": 1, "num_heads": 2, "mlp_dim": 64,
        # mmjax.tokenizer ids: 0 pad, 1 unk, 2 bos, 3 eos.
        "bos_id": 2, "eos_id": 3, "dtype": "float32", "param_dtype": "float32",
    })
    c.eval = ml_collections.ConfigDict({"beam_size": 1, "alpha": 0.6, "num_samples": 16})
    c.optim.learning_rate = 3e-3
    c.optim.warmup_steps = 10
    return c
