"""image_text: image + text classification through the public tfds path.

Any tfds dataset with an image, a text and a label works by config keys alone:
``--config.data.name=NAME``, ``--config.data.modalities.image.feature=PATH``,
``--config.data.modalities.text.feature=PATH`` (nested features with "/",
e.g. ``captions/text``; ``...text.index`` picks one of a sequence of texts),
``--config.data.label=PATH`` and ``--config.data.label_kind=class|multi_hot``
(multi-hot labels also need ``--config.loss.name=sigmoid_bce``). The offline
default is the real Tux Paint stamps (clip art + English description, 16
categories, balanced class weights). For COCO captions (multi-label over the
80 object classes), e.g.::

  python -m experiments train image_text --workdir runs/coco \\
    --config.data.name=coco_captions --config.data.label=objects/label \\
    --config.data.label_kind=multi_hot --config.data.class_weights=None \\
    --config.data.modalities.text.feature=captions/text --config.loss.name=sigmoid_bce
"""
import ml_collections

from experiments.configs import base


def data_config() -> ml_collections.ConfigDict:
    from mmjax.data.config import default_config

    cfg = default_config("stamps/en")
    del cfg.modalities["audio"]
    cfg.class_weights = "balanced"
    cfg.modalities.image.augment_pad = 4
    cfg.modalities.image.augment_flip = True
    cfg.prefetch = 2
    return cfg


def get_config() -> ml_collections.ConfigDict:
    c = base.get_config()
    c.description = "image + text classification on any tfds dataset by config keys (default: stamps, 16 classes)"
    c.modalities = ()
    c.total_steps = 800
    c.batch_size = 32
    c.log_every = 50
    c.eval_every = 200
    c.checkpoint_every = 0
    c.tensorboard = True
    c.data = data_config()
    c.model.encoders = ml_collections.ConfigDict({
        "image": {"name": "cnn", "features": (16, 32, 64), "convs_per_stage": 1, "out_dim": 64},
        "text": {"name": "transformer", "vocab_size": 260, "hidden_dim": 64, "num_layers": 2, "num_heads": 4,
                 "mlp_dim": 128, "max_len": 128, "pool": "mean"},
    })
    c.model.fusion = "concat"
    c.model.fusion_config = ml_collections.ConfigDict({"out_dim": 64})
    c.model.head_hidden = (64,)
    c.model.dropout_rate = 0.1
    c.optim.learning_rate = 1e-3
    c.optim.warmup_steps = 50
    return c
