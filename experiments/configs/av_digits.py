"""av_digits: spoken + written digits; image via ``cnn``, audio via ``audio_cnn``, middle fusion.

Needs the ``av_digits`` tfds builder (mmjax.data) and the cnn / audio_cnn encoders.
"""
import ml_collections

from experiments.configs import base


def get_config() -> ml_collections.ConfigDict:
    c = base.get_config()
    c.description = "av_digits: image (cnn) + audio (audio_cnn), concat fusion, 10 classes"
    c.total_steps = 3000
    c.batch_size = 64
    c.log_every = 50
    c.eval_every = 500
    c.checkpoint_every = 500
    c.data = ml_collections.ConfigDict({"name": "av_digits"})
    c.model.encoders = ml_collections.ConfigDict({
        "image": {"name": "cnn"},
        "audio": {"name": "audio_cnn"},
    })
    c.model.fusion = "concat"
    c.model.fusion_config = ml_collections.ConfigDict({"out_dim": 128})
    c.model.head_hidden = (128,)
    c.model.dropout_rate = 0.1
    c.optim.learning_rate = 1e-3
    c.optim.warmup_steps = 100
    return c
