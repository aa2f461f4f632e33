"""av_digits contrastive: digit images (cnn) <-> spoken digits (audio_cnn), CLIP loss.

Needs the ``av_digits`` tfds builder (mmjax.data). Eval: recall@K both ways and
a linear probe on the frozen embeddings (no text tower, so no zero-shot).
"""
import ml_collections

from experiments.configs import base


def get_config() -> ml_collections.ConfigDict:
    c = base.get_config()
    c.description = "av_digits: image (cnn) <-> audio (audio_cnn) contrastive pretraining (CLIP), retrieval + probe"
    c.task = "contrastive"
    c.total_steps = 3000
    c.batch_size = 128
    c.eval_every = 500
    c.checkpoint_every = 500
    c.data = ml_collections.ConfigDict({"name": "av_digits"})
    c.model = ml_collections.ConfigDict({
        "towers": {"image": {"encoder": "cnn"}, "audio": {"encoder": "audio_cnn"}},
        "embed_dim": 128, "loss": "clip", "dtype": "float32", "param_dtype": "float32",
    })
    c.eval = ml_collections.ConfigDict({"ks": (1, 5, 10), "prompts": (), "probe_examples": 4096, "probe_l2": 1e-4})
    c.optim.learning_rate = 1e-3
    c.optim.warmup_steps = 100
    c.checkpoint.best_metric = "mean_R@1"
    c.checkpoint.best_mode = "max"
    return c
