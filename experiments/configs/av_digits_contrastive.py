"""av_digits contrastive: digit images (cnn) <-> spoken digits (audio_cnn), CLIP loss.

Needs the ``av_digits`` tfds builder (mmjax.data). Eval: recall@K both ways and
a linear probe on the frozen embeddings (no text tower, so no zero-shot).

The towers use the ``av_digits`` classifier's encoders and its corrupted data,
so a finished run initialises that classifier directly:
``train av_digits --config.init_from.path=WORKDIR`` copies ``encoders_<m>``
into ``encoder_<m>_0`` (experiments/PRETRAIN_av_digits.md has the comparison).
"""
import ml_collections

from experiments.configs import av_digits, base


def get_config() -> ml_collections.ConfigDict:
    c = base.get_config()
    c.description = "av_digits: image (cnn) <-> audio (audio_cnn) contrastive pretraining (CLIP), retrieval + probe"
    c.task = "contrastive"
    c.total_steps = 3000
    c.batch_size = 128
    c.eval_every = 500
    c.checkpoint_every = 500
    c.data = av_digits.data_config()
    towers = {}
    for m, enc in av_digits.get_config().model.encoders.items():
        enc = dict(enc)
        towers[m] = {"encoder": enc.pop("name"), **enc}
    c.model = ml_collections.ConfigDict({
        "towers": towers,
        "embed_dim": 128, "loss": "clip", "dtype": "float32", "param_dtype": "float32",
    })
    c.eval = ml_collections.ConfigDict({"ks": (1, 5, 10), "prompts": (), "probe_examples": 4096, "probe_l2": 1e-4})
    c.optim.learning_rate = 1e-3
    c.optim.warmup_steps = 100
    return c
