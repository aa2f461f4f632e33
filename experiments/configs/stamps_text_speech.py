"""stamps_text_speech: the stamps experiment with text + speech only (same encoders, data and training)."""
import ml_collections

from experiments import modalities
from experiments.configs import stamps


def get_config() -> ml_collections.ConfigDict:
    c = stamps.get_config()
    c.description = "stamps, text + speech only (two-modality variant of stamps)"
    return modalities.restrict(c, ('text', 'audio'))
