"""stamps: Tux Paint clip art + description text + spoken description, 16 categories.

Real data from the installed Debian package ``tuxpaint-stamps-default``
(``python -m experiments data build stamps``; built on first use otherwise):
617 train / 168 test stamps with French descriptions (the language with the
most recordings; stamps without a recording have ``modality_mask["audio"]``
False). Image: a small ``cnn`` at 64 x 64; text: a ``gru`` over UTF-8 bytes;
speech: ``audio_cnn`` on log-mel spectrograms at 8 kHz. Categories are very
unbalanced (``food`` and ``animals`` dominate), so the loss uses balanced
class weights and the eval reports macro-F1 beside accuracy (eval itself is
unweighted). Two-modality variants: ``stamps_image_text``,
``stamps_image_speech``, ``stamps_text_speech`` (or ``--config.modalities=...``).

Measured (CPU, one seed, 400 steps of batch 32, about 21 epochs; the 168-stamp
test split): 41.1% accuracy, macro-F1 0.190 (over all 16 classes; a class
absent from the test split counts as 0). Small encoders trained from scratch
on 617 examples are far behind the pretrained features of ``features3``
(89% / 0.54 with the same split); the fusion block (``gated``) is provisional
until ``sweep stamps`` has been run.
"""
import ml_collections

from experiments.configs import base
from experiments.configs.av_digits import FUSION_CONFIGS as _AV_FUSION_CONFIGS

# ``late`` is decision-level (mmjax.models.fusion_choice): per-modality heads over the classes,
# combined by the late block to out_dim features, then the head.
# The encoders here pool by mean, so the attention blocks' pooled token would only repeat
# their tokens' mean: they read their tokens as they are.
FUSION_CONFIGS = dict(_AV_FUSION_CONFIGS, late={"out_dim": 64}, cross_attention={"out_dim": 64},
                      bottleneck={"out_dim": 64}, perceiver={"out_dim": 64})


def data_config() -> ml_collections.ConfigDict:
    from mmjax.data.config import default_config

    cfg = default_config("stamps")
    # Balanced class weights for the loss: N / (C * count_c) from the train split.
    cfg.class_weights = "balanced"
    cfg.modalities.image.augment_pad = 4
    cfg.modalities.image.augment_flip = True
    cfg.modalities.audio.augment_gain_db = 6.0
    cfg.modality_dropout = {"image": 0.1, "text": 0.1, "audio": 0.1}
    cfg.prefetch = 2
    return cfg


def get_config() -> ml_collections.ConfigDict:
    c = base.get_config()
    c.description = "stamps (real Tux Paint data): image (cnn) + text (gru, bytes) + speech (audio_cnn), 16 classes"
    c.modalities = ()              # () = all three; e.g. ("image", "text")
    c.total_steps = 800
    c.batch_size = 32
    c.log_every = 50
    c.eval_every = 200
    c.checkpoint_every = 0
    c.tensorboard = True
    c.checkpoint.best_metric = "macro_f1"
    c.data = data_config()
    c.model.encoders = ml_collections.ConfigDict({
        "image": {"name": "cnn", "features": (16, 32, 64), "convs_per_stage": 1, "out_dim": 64},
        "text": {"name": "gru", "vocab_size": 260, "embed_dim": 32, "hidden_dim": 64, "bidirectional": True,
                 "pool": "mean"},
        "audio": {"name": "audio_cnn", "sample_rate": 8000, "n_fft": 256, "hop_length": 128, "n_mels": 40,
                  "features": (16, 32), "convs_per_stage": 1, "out_dim": 64},
    })
    c.fusion_configs = ml_collections.ConfigDict(FUSION_CONFIGS)  # per-fusion options: `sweep` and --config.model.fusion=X use fusion_configs[X]
    c.model.fusion = "gated"
    c.model.fusion_config = ml_collections.ConfigDict({"out_dim": 64})
    c.model.head_hidden = (64,)
    c.model.dropout_rate = 0.2
    c.optim.learning_rate = 2e-3
    c.optim.warmup_steps = 50
    c.optim.weight_decay = 1e-3
    return c
