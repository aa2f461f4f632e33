"""av_digits_video: a clip of the handwritten digit bouncing through a frame + the spoken digit, 10 classes.

The clip (10 frames of 32x32, Moving MNIST at half scale) is av_digits' image moving behind a
still occluder in heavy per-frame noise; the speech is av_digits' at -6 dB
(mmjax.data.default_config("av_digits_video")), so each alone is clearly imperfect
and fusion helps (experiments/VIDEO_av_digits.md). Encoders: a small ViViT
(``video_vit``) for the clip and av_digits' ``audio_cnn``; the fusion block is
``weighted``. Built on first use or with ``python -m experiments data build av_digits_video``.
"""
import ml_collections

from experiments.configs import av_digits, base

DEFAULT_FUSION = "weighted"
# av_digits' per-fusion options: both encoders end in a 64-d pooled vector here too.
FUSION_CONFIGS = dict(av_digits.FUSION_CONFIGS)


def data_config(name: str = "av_digits_video") -> ml_collections.ConfigDict:
    from mmjax.data.config import default_config

    cfg = default_config(name)
    cfg.prefetch = 2
    return cfg


def get_config() -> ml_collections.ConfigDict:
    c = base.get_config()
    c.description = "av_digits_video: moving digit clip (video_cnn) + spoken digit (audio_cnn), noisy both ways"
    c.modalities = ()              # () = all; ("video",) or ("audio",) for a unimodal baseline
    c.total_steps = 800
    c.batch_size = 32
    c.log_every = 50
    c.eval_every = 200             # validation evals select the checkpoint that is tested
    c.checkpoint_every = 200
    c.tensorboard = True
    c.data = data_config()
    c.model.encoders = ml_collections.ConfigDict({
        # ViViT over (2, 8, 8) tubelets: (10, 32, 32) -> 5 x 16 tokens, 2 joint space-time layers. A 3D CNN
        # (video_cnn, features (8, 16, 32)) took 4.6x as long per step on this CPU for the same clips.
        "video": {"name": "video_vit", "tubelet_size": (2, 8, 8), "hidden_dim": 64, "num_layers": 2,
                  "num_heads": 4, "mlp_dim": 128, "pool": "mean", "max_time_tokens": 8},
        "audio": {"name": "audio_cnn", "sample_rate": 8000, "n_fft": 256, "hop_length": 128, "n_mels": 40,
                  "features": (16, 32), "convs_per_stage": 1, "out_dim": 64, "pool": "flatten"},
    })
    c.fusion_configs = ml_collections.ConfigDict(FUSION_CONFIGS)
    c.model.fusion = DEFAULT_FUSION
    c.model.fusion_config = ml_collections.ConfigDict(FUSION_CONFIGS[DEFAULT_FUSION])
    c.model.head_hidden = (64,)
    c.model.dropout_rate = 0.1
    c.optim.learning_rate = 2e-3
    c.optim.warmup_steps = 50
    return c
