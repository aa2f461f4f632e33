"""The ``modalities`` config switch: restrict an experiment to a subset of its modalities.

``config.modalities = ("image",)`` (or ``--config.modalities=image``) keeps only
those encoders in ``config.model.encoders`` and, for pipeline datasets, only
those entries of ``config.data.modalities`` (so the other modalities are not
decoded at all). With a single modality left the model becomes a *unimodal
baseline*: encoder -> head, no fusion block (the model config becomes
:func:`mmjax.models.fusion_choice.unimodal` of it; every real fusion block
needs two or more modalities). An empty tuple leaves the experiment unchanged.
"""
from __future__ import annotations

from typing import Any, Sequence

import ml_collections

from experiments.errors import UserError
from mmjax.models import fusion_choice
from mmjax.models.fusion_choice import NO_FUSION

# Kept for callers that name the baseline's "fusion": the classifier's no-fusion value.
UNIMODAL = NO_FUSION


def selected(config: Any) -> tuple:
    """The configured subset, as a tuple of names (``()`` = all)."""
    value = config.get("modalities", ()) if hasattr(config, "get") else ()
    if value is None:
        return ()
    if isinstance(value, str):
        value = tuple(v.strip() for v in value.split(",") if v.strip())
    return tuple(value)


def restrict(config: ml_collections.ConfigDict, modalities: Sequence[str] = None) -> ml_collections.ConfigDict:
    """Applies ``modalities`` (default: ``config.modalities``) to ``config`` in place and returns it.

    Raises:
      UserError: a name that is not one of the experiment's encoders.
    """
    wanted = tuple(modalities) if modalities is not None else selected(config)
    if not wanted:
        return config
    encoders = config.model.encoders
    known = sorted(encoders.keys())
    unknown = [m for m in wanted if m not in encoders]
    if unknown:
        raise UserError(f"--config.modalities: {unknown} not among this experiment's modalities {known}")
    with config.ignore_type():
        with config.unlocked():  # the data factory drops the other modalities from batches
            config.modalities = tuple(wanted)
        config.model.encoders = ml_collections.ConfigDict({m: encoders[m].to_dict() if hasattr(encoders[m], "to_dict")
                                                           else encoders[m] for m in wanted})
        data_mods = config.data.get("modalities") if "data" in config else None
        if data_mods:
            config.data.modalities = ml_collections.ConfigDict(
                {m: data_mods[m].to_dict() for m in wanted if m in data_mods})
            dropout = config.data.get("modality_dropout")
            if dropout:
                config.data.modality_dropout = {m: p for m, p in dropout.items() if m in wanted}
        if len(wanted) == 1:
            model = config.model.to_dict()
            for key, value in fusion_choice.unimodal(model, wanted[0]).items():
                if key not in model or model[key] != value:
                    config.model[key] = value
    return config
