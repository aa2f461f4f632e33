"""stamps captioning: English description of a Tux Paint stamp from its image.

Needs the ``stamps`` tfds builder (runs where the Debian ``tuxpaint-stamps``
package is installed). Teacher-forced transformer decoder over the pipeline's
text ids; eval decodes with beam search and scores BLEU-4 / CIDEr-D.
"""
import ml_collections

from experiments.configs import base


def get_config() -> ml_collections.ConfigDict:
    c = base.get_config()
    c.description = "stamps: image (cnn) -> English description, transformer decoder, BLEU-4 / CIDEr-D"
    c.task = "captioning"
    c.total_steps = 3000
    c.batch_size = 64
    c.eval_every = 1000
    c.checkpoint_every = 500
    from mmjax.data.config import default_config

    c.data = default_config("stamps/en")  # 64 px images -> English descriptions (bytes)
    del c.data.modalities["audio"]
    c.model = ml_collections.ConfigDict({
        "encoder": {"encoder": "cnn"}, "source": "image", "target": "text", "decoder": "transformer",
        "vocab_size": 260, "max_len": 96, "width": 128, "num_layers": 2, "num_heads": 4, "mlp_dim": 256,
        "dropout_rate": 0.1, "bos_id": 2, "eos_id": 3, "dtype": "float32", "param_dtype": "float32",
    })
    c.eval = ml_collections.ConfigDict({"beam_size": 4, "alpha": 0.6, "num_samples": 30})
    c.optim.learning_rate = 1e-3
    c.optim.warmup_steps = 200
    return c
