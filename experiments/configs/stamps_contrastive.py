"""stamps contrastive: Tux Paint stamp images <-> descriptions and <-> speech (three towers).

Needs the ``stamps`` tfds builder (mmjax.data), which reads the Debian
``tuxpaint-stamps`` package; runs where it is installed. Every tower pair gets
its own logit scale; eval: recall@K for each pair, zero-shot from class-name
prompts through the text tower, linear probe.
"""
import ml_collections

from experiments.configs import base


def get_config() -> ml_collections.ConfigDict:
    c = base.get_config()
    c.description = "stamps: image <-> French text and image <-> French speech contrastive (real Tux Paint stamps), SigLIP"
    c.task = "contrastive"
    c.total_steps = 2000
    c.batch_size = 64
    c.eval_every = 500
    c.checkpoint_every = 500
    from mmjax.data.config import default_config

    # French: the language with a recorded description for nearly every stamp (English has ~50)
    c.data = default_config("stamps/fr")  # 64 px images, French descriptions (bytes), 4 s of speech at 8 kHz
    c.model = ml_collections.ConfigDict({
        "towers": {
            # small towers (a few minutes per hundred steps on a 2-core CPU); speech is 4 s at 8 kHz
            "image": {"encoder": "cnn", "features": (16, 32, 64)},
            "text": {"encoder": "transformer", "vocab_size": 260, "hidden_dim": 128, "num_layers": 2,
                     "num_heads": 4, "mlp_dim": 256, "max_len": 96},
            "audio": {"encoder": "audio_cnn", "sample_rate": 8000, "n_fft": 256, "hop_length": 256,
                      "n_mels": 40, "features": (16, 32, 64)},
        },
        "embed_dim": 128, "loss": "siglip", "dtype": "float32", "param_dtype": "float32",
    })
    c.eval = ml_collections.ConfigDict({"ks": (1, 5, 10), "prompts": ("{}", "a picture of {}"),
                                        "probe_examples": 2048, "probe_l2": 1e-3})
    c.optim.learning_rate = 1e-3
    c.optim.warmup_steps = 100
    return c
