"""mmjax: a JAX/Flax model zoo for multimodal fusion.

Encoders turn each modality into features, fusion blocks combine them, models
compose both, and ``mmjax.train`` trains the result with jit/pmap/sharding.
``import mmjax`` never imports tensorflow: only ``mmjax.data`` does, lazily.
"""
from mmjax import encoders, fusion, layers
from mmjax.types import Encoded

__version__ = "0.1.0"
__all__ = ["Encoded", "encoders", "fusion", "layers", "load", "__version__"]


def __getattr__(name):
    # ``mmjax.load`` (a trained workdir -> mmjax.inference.LoadedModel), imported on first use:
    # it pulls in the checkpoint readers, which ``import mmjax`` stays without.
    if name == "load":
        from mmjax.inference import load
        return load
    raise AttributeError(f"module 'mmjax' has no attribute {name!r}")
