"""COCO captions through tfds (``coco_captions``): image (resnet) -> caption.

Runs where the tfds dataset is prepared (tested offline with
``tfds.testing.mock_data``). The pipeline takes one of the five captions as
the training target; eval scores BLEU-4 / CIDEr-D against the batch's
``references`` when the pipeline provides them.
"""
import ml_collections

from experiments.configs import base


def get_config() -> ml_collections.ConfigDict:
    c = base.get_config()
    c.description = "coco_captions (tfds): image (resnet) -> caption, transformer decoder, BLEU-4 / CIDEr-D"
    c.task = "captioning"
    c.total_steps = 50000
    c.batch_size = 128
    c.eval_every = 5000
    c.eval_steps = 40
    c.eval_split = "val"
    c.checkpoint_every = 2500
    from mmjax.data.config import default_config

    c.data = default_config("coco_captions")  # 224 px images, first caption, 64 byte tokens
    c.model = ml_collections.ConfigDict({
        "encoder": {"encoder": "resnet", "depth": 18, "stage_sizes": None, "width": 64, "small_inputs": False},
        "source": "image", "target": "text", "decoder": "transformer",
        "vocab_size": 260, "max_len": 96, "width": 256, "num_layers": 4, "num_heads": 8, "mlp_dim": 1024,
        "dropout_rate": 0.1, "bos_id": 2, "eos_id": 3, "dtype": "bfloat16", "param_dtype": "float32",
    })
    c.eval = ml_collections.ConfigDict({"beam_size": 4, "alpha": 0.6, "num_samples": 50})
    c.optim.learning_rate = 5e-4
    c.optim.warmup_steps = 1000
    return c
