"""av_digits_image: the image-only baseline of av_digits (same encoder, no fusion)."""
import ml_collections

from experiments import modalities
from experiments.configs import av_digits


def get_config() -> ml_collections.ConfigDict:
    c = av_digits.get_config()
    c.description = "av_digits, image only (unimodal baseline: image encoder + head)"
    return modalities.restrict(c, ("image",))
