"""av_digits: handwritten digit image + spoken digit audio (8 kHz, unseen test voices), 10 classes.

Both modalities are corrupted on purpose (mmjax.data.default_config: a large
occluder and pixel noise on the image, 0 dB white noise on the speech), so
each alone is clearly imperfect and fusion helps. The fusion block is
``weighted`` (see DEFAULT_FUSION); small CNN encoders keep a CPU run to a
few minutes. Needs the ``av_digits`` tfds builder
(``python -m experiments data build av_digits``, built on first use otherwise).
"""
import ml_collections

from experiments.configs import base

# The top row (and the steadiest across seeds) of the all-blocks, 2-seed sweep in
# experiments/SWEEP_av_digits.md: weighted 0.9125 ± 0.008, sum 0.904, concat 0.902, late 0.896.
DEFAULT_FUSION = "weighted"
FUSION_CONFIGS = {
    "concat": {"out_dim": 64},
    "sum": {"out_dim": 64},
    "weighted": {"out_dim": 64},
    "gated": {"out_dim": 64},
    "film": {"out_dim": 64},
    "tensor": {"out_dim": 64},
    "low_rank": {"out_dim": 64},
    "bilinear": {"out_dim": 64},
    "late": {},  # decision-level by itself: per-modality heads over the classes (out_dim = C)
    # The CNNs' per-position tokens say little alone (a mean over them is what pool="mean"
    # reaches: image only 0.22 vs 0.62 with "flatten" after 400 steps), so the attention blocks
    # also see each encoder's flatten-pooled vector as a token and read out there.
    "cross_attention": {"out_dim": 64, "pooled_token": True, "readout": "pooled_token"},
    "bottleneck": {"out_dim": 64, "pooled_token": True, "readout": "pooled_token"},
    # The latents read the 2 pooled tokens as 2 of ~67 keys; the head reads them directly (0.189 -> 0.695
    # at 300 steps, seed 0: SWEEP_av_digits.md).
    "perceiver": {"out_dim": 64, "pooled_token": True, "readout": "pooled_token"},
    # The block.bootstrap / MMF bilinear family. The published widths (1200-16000) are for VQA's
    # 2048-d image and 2400-d question features; for these 64-d encoders the joint spaces below
    # keep every model at 0.50-0.63M parameters (weighted: 0.46M) and a CPU run short.
    "mcb": {"out_dim": 64, "mm_dim": 2048},  # sketch of the 64 x 64 = 4096-entry outer product
    "mlb": {"out_dim": 64, "mm_dim": 256},
    "mfh": {"out_dim": 64, "mm_dim": 128},  # x factor 2 = 256 products per MFB stage, as wide as mlb
    "mutan": {"out_dim": 64, "mm_dim": 64, "rank": 5},  # the encoders' width; rank 5 (published 15 of 1600)
    "block": {"out_dim": 64, "mm_dim": 256, "chunks": 8, "rank": 8},  # 8 chunks of 32, rank 8 (published 20 of 80, 15)
    "linear_sum": {"out_dim": 64, "mm_dim": 256},
    "concat_mlp": {"out_dim": 64, "dimensions": (256,)},  # one hidden layer; published (500, 500) for 4k-d inputs
    # TorchMultimodal and MultiBench (issue 20, catalogue A).
    "attention_fusion": {"out_dim": 64},
    # DeepSets' rho is an MLP; with no hidden layer (the block's default) it is one Linear after the pool.
    "deepset": {"out_dim": 64, "hidden_dims": (64,)},
    # P = 64 (the encoders' width): 4 heads of 16, the attention blocks' default head count.
    "deepset_transformer": {"out_dim": 64, "num_heads": 4, "hidden_dims": (64,)},
    "multiplicative": {"out_dim": 64},
    "nl_gate": {"out_dim": 64},
    # The two encoders' token sequences differ in length (not time-aligned), so stack stacks the
    # pooled vectors (equal widths, 64).
    "stack": {"out_dim": 64, "inputs": "pooled"},
    # As the attention blocks above: the pooled token carries what the CNN tokens alone do not.
    "early_transformer": {"out_dim": 64, "pooled_token": True, "readout": "pooled_token"},
    "late_transformer": {"out_dim": 64, "pooled_token": True, "readout": "pooled_token"},
}


def data_config(name: str = "av_digits") -> ml_collections.ConfigDict:
    from mmjax.data.config import default_config

    cfg = default_config(name)
    cfg.prefetch = 2
    return cfg


def get_config() -> ml_collections.ConfigDict:
    c = base.get_config()
    c.description = "av_digits: image (cnn) + spoken digit (audio_cnn), noisy both ways, 10 classes"
    c.modalities = ()              # () = all; e.g. ("image",) for a unimodal baseline
    c.total_steps = 800
    c.batch_size = 32
    c.log_every = 50
    c.eval_every = 0
    c.checkpoint_every = 0
    c.tensorboard = True
    c.data = data_config()
    c.model.encoders = ml_collections.ConfigDict({
        # pool="flatten": small CNNs need to know where (image) and when (audio) a feature fired.
        "image": {"name": "cnn", "features": (16, 32), "convs_per_stage": 1, "out_dim": 64, "pool": "flatten"},
        "audio": {"name": "audio_cnn", "sample_rate": 8000, "n_fft": 256, "hop_length": 128, "n_mels": 40,
                  "features": (16, 32), "convs_per_stage": 1, "out_dim": 64, "pool": "flatten"},
    })
    c.fusion_configs = ml_collections.ConfigDict(FUSION_CONFIGS)  # per-fusion options: `sweep` and --config.model.fusion=X use fusion_configs[X]
    c.model.fusion = DEFAULT_FUSION
    c.model.fusion_config = ml_collections.ConfigDict(FUSION_CONFIGS[DEFAULT_FUSION])
    c.model.head_hidden = (64,)
    c.model.dropout_rate = 0.1
    c.optim.learning_rate = 2e-3
    c.optim.warmup_steps = 50
    return c
