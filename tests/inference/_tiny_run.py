"""A tiny run trained in memory for the inference tests: image (uint8, with norms and BatchNorm),
byte-token text, audio at 8 kHz and a vector modality, 3 named classes; and the evaluation path's
probabilities on a batch, computed without mmjax.inference (the reference the tests compare with)."""
import numpy as np

from experiments.configs import base
from experiments.reports import analysis

H, W, C = 8, 8, 3
MAX_LEN, LENGTH, RATE = 12, 400, 8000
NORMS = {"image": ((0.4, 0.5, 0.6), (0.2, 0.25, 0.3))}
CLASSES = ["low", "mid", "high"]
INFO = {
    "name": "tiny_mixed", "num_classes": 3, "class_names": CLASSES, "sample_rate": RATE, "image_norms": NORMS,
    "modalities": {"image": {"kind": "image", "shape": (H, W, C), "dtype": "float32", "sequence": False},
                   "text": {"kind": "text", "shape": (MAX_LEN,), "dtype": "int32", "sequence": True},
                   "audio": {"kind": "audio", "shape": (LENGTH,), "dtype": "float32", "sequence": True},
                   "v": {"kind": "vector", "shape": (3,), "dtype": "float32", "sequence": False}},
}
WORDS = ["red", "green", "blue sky", "a"]


def batch(rng, n):
    """A batch as the data pipeline hands it over (uint8 images, byte-token text, float audio)."""
    from mmjax.data.preprocess import length_mask, tokenize_bytes

    label = rng.integers(0, 3, n).astype(np.int32)
    image = np.clip(rng.normal(60 + 60 * label[:, None, None, None], 30, (n, H, W, C)), 0, 255).astype(np.uint8)
    ids, tmask = tokenize_bytes([WORDS[i] for i in rng.integers(0, 4, n)], MAX_LEN)
    lengths = rng.integers(100, LENGTH + 1, n)
    audio = np.where(length_mask(lengths, LENGTH), rng.normal(0, 0.1, (n, LENGTH)), 0).astype(np.float32)
    present = rng.random(n) > 0.2
    return {"inputs": {"image": image, "text": ids, "audio": audio,
                       "v": rng.normal(size=(n, 3)).astype(np.float32) + label[:, None]},
            "token_mask": {"text": tmask, "audio": length_mask(lengths, LENGTH)},
            "modality_mask": {"image": np.ones(n, bool), "text": np.ones(n, bool), "audio": np.ones(n, bool),
                              "v": present},
            "label": label, "weight": np.ones(n, np.float32)}


def data_fn(config, split, *, global_batch_size, seed, train, start_step=0):
    rng = np.random.default_rng([seed, len(split), start_step])
    steps = range(start_step, 10 ** 9) if train else range(2)
    for _ in steps:
        yield batch(rng, global_batch_size)


def config():
    c = base.get_config()
    c.total_steps, c.batch_size, c.log_every, c.eval_every, c.checkpoint_every = 3, 8, 1, 0, 0
    c.tensorboard = False
    c.parallel.mode = "single"
    c.optim.warmup_steps = 1
    c.data = {"name": "tiny_mixed", "modalities": {"audio": {"kind": "audio", "length": LENGTH, "scale": 32768.0}}}
    c.model.encoders = {
        "image": {"name": "resnet", "stage_sizes": (1,), "width": 4, "small_inputs": True},  # BatchNorm
        "text": {"name": "transformer", "vocab_size": 260, "hidden_dim": 8, "num_layers": 1, "num_heads": 2,
                 "mlp_dim": 16, "max_len": MAX_LEN},
        "audio": {"name": "audio_cnn", "features": (4,), "sample_rate": RATE, "n_fft": 64, "hop_length": 32,
                  "n_mels": 8},
        "v": {"name": "mlp", "features": (8,)},
    }
    c.model.fusion_config = {"out_dim": 8}
    c.model.dropout_rate = 0.5  # must be off in eval mode, or nothing below would match
    return c


def train(workdir):
    from mmjax.train import loop

    loop.train_and_evaluate(config(), workdir, data_fn=data_fn, info_fn=lambda c: dict(INFO), console=None)


def eval_path_probs(run_dir, batch, which="best"):
    """Probabilities of ``batch`` through the runner's own placement (uint8 images normalised on
    device) and the eval report's predict function: independent of mmjax.inference."""
    import jax

    from mmjax.train import builder, evaluation, run_record

    rec = run_record.read(run_dir)
    runner = builder.build(rec.config, 3, rec.data_info)
    ckpt = builder.open_checkpoints(rec.config, run_dir, for_eval=True)
    try:
        host = runner.host_state(evaluation.restore(runner, ckpt, evaluation.selected_step(ckpt, which),
                                                    batch, rec.config))
    finally:
        ckpt.close()
    variables = {"params": host.params, **({"batch_stats": host.batch_stats} if host.batch_stats else {})}
    model_keys = ("inputs", "token_mask", "modality_mask")
    placed = jax.device_get(runner.put_batch({k: batch[k] for k in model_keys if k in batch}))
    return analysis.softmax(analysis.make_predict_fn(runner.model, jax.device_get(variables))(placed))


def decode(ids):
    from mmjax.tokenizer import ByteTokenizer

    return ByteTokenizer().decode(ids)
