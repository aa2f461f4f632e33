"""mmjax: a JAX/Flax model zoo for multimodal fusion.

Encoders turn each modality into features, fusion blocks combine them, models
compose both, and ``mmjax.train`` trains the result with jit/pmap/sharding.
``import mmjax`` never imports tensorflow: only ``mmjax.data`` does, lazily.
"""
from mmjax import encoders, fusion, layers
from mmjax.types import Encoded

__version__ = "0.1.0"
__all__ = ["Encoded", "encoders", "fusion", "layers", "__version__"]
