"""stamps_image_text: the stamps experiment with image + text only (same encoders, data and training)."""
import ml_collections

from experiments import modalities
from experiments.configs import stamps


def get_config() -> ml_collections.ConfigDict:
    c = stamps.get_config()
    c.description = "stamps, image + text only (two-modality variant of stamps)"
    return modalities.restrict(c, ('image', 'text'))
