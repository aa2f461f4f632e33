"""Using a trained classifier: ``load`` a workdir, ``predict`` from files / strings / arrays, ``export`` it.

* :func:`load` (also ``mmjax.load``) -> :class:`LoadedModel` (``preprocess``, ``logits``, ``predict``);
* :mod:`mmjax.inference.inputs`: raw inputs -> model-ready batches, as the data pipeline prepares them;
* :func:`export`: the inference path as a serialised ``jax.export`` artifact plus a JSON description.
"""
from mmjax.inference.export import export
from mmjax.inference.inputs import InputError, ModalitySpec
from mmjax.inference.load import LoadedModel, LoadError, load

__all__ = ["InputError", "LoadError", "LoadedModel", "ModalitySpec", "export", "load"]
