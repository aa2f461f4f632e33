"""Which fusion a classifier config asks for: the one reader of ``model.placement`` and ``model.fusion``.

:func:`resolve` turns the config's spellings into one :class:`FusionChoice`
(where the modalities meet, which registered block joins them, its options):

==================  =============================  ===========  ==========================================
model.placement     model.fusion                   placement    block
==================  =============================  ===========  ==========================================
middle (default)    concat (default) or any X      middle       X over the per-modality features
any                 a logit block (``late``)       late         it, over per-modality logits (one head each)
late                concat (default)               late         ``late`` (the old spelling of ``fusion=late``)
late                any other X                    late         X over the per-modality logits
middle              ``none`` (:data:`NO_FUSION`)   middle       None: one modality, encoder -> head
early               ``none`` or a non-logit X      early        None: one shared transformer fuses tokens
==================  =============================  ===========  ==========================================

A *logit block* declares ``fuses_logits = True`` on its class (``LateFusion``):
it combines class logits, so its ``out_dim`` defaults to the number of classes.
Anything else (an unknown name, ``none`` with several modalities or with
``placement=late``, an unknown placement) is a :class:`ModelConfigError` whose
one line names the config keys.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Optional

from mmjax import errors
from mmjax import fusion as fusion_registry
from mmjax.registry import UnknownNameError

PLACEMENTS = ("early", "middle", "late")
# model.fusion value for a single-modality model (a unimodal baseline): no fusion block.
NO_FUSION = "none"
# The classifier's defaults (its ``placement`` / ``fusion`` attributes), read here for a config that leaves them out.
DEFAULT_PLACEMENT = "middle"
DEFAULT_FUSION = "concat"


class ModelConfigError(errors.ConfigError):
    """Bad classifier config: placement, fusion, encoder spec or inputs that do not match it."""


@dataclasses.dataclass(frozen=True)
class FusionChoice:
    """What a classifier config asks for.

    Attributes:
      placement: "early", "middle" or "late" (per-modality heads, their logits fused).
      block: registered fusion block name, or None (early placement; a unimodal baseline).
      block_config: the block's options (``model.fusion_config``; a logit block's
        ``out_dim`` filled with the number of classes when :func:`resolve` was given it).
    """

    placement: str
    block: Optional[str]
    block_config: Mapping[str, Any]


def fuses_logits(name: str) -> bool:
    """Whether fusion block ``name`` combines per-modality class logits (its class says ``fuses_logits = True``)."""
    return bool(getattr(fusion_registry.FUSION.get(name), "fuses_logits", False))


def _plain(x: Any) -> Dict[str, Any]:
    x = x.to_dict() if hasattr(x, "to_dict") else x
    return dict(x or {})


def resolve(model_config: Mapping[str, Any], num_classes: Optional[int] = None) -> FusionChoice:
    """``config.model`` (dict or ConfigDict) -> :class:`FusionChoice` (the table in the module docstring).

    Reads ``placement`` (default "middle"), ``fusion`` (default "concat"),
    ``fusion_config`` and, for ``fusion="none"``, ``encoders``. The block name is
    checked against the fusion registry here, once ("did you mean" hints).

    Raises:
      ModelConfigError: an unknown placement, or ``fusion="none"`` where it cannot apply.
      UnknownNameError: an unknown fusion block (a ConfigError; the message starts with ``model.fusion``).
    """
    model = _plain(model_config)
    placement = model.get("placement", DEFAULT_PLACEMENT)
    name = model.get("fusion", DEFAULT_FUSION)
    block_config = _plain(model.get("fusion_config"))
    if placement not in PLACEMENTS:
        raise ModelConfigError(f"model.placement must be one of {PLACEMENTS}, got {placement!r}")
    if name == NO_FUSION:
        if placement == "late":
            raise ModelConfigError(
                f"model.fusion={NO_FUSION!r} (no fusion block) contradicts model.placement='late' "
                "(per-modality logits combined by a block); use model.placement='middle' for a unimodal baseline"
            )
        if placement == "middle":
            encoders = sorted(_plain(model.get("encoders")))
            if len(encoders) != 1:
                raise ModelConfigError(
                    f"model.fusion={NO_FUSION!r} (a unimodal baseline) needs exactly one modality in "
                    f"model.encoders, got {encoders}"
                )
        return FusionChoice(placement, None, {})
    if placement == "late" and name == "concat":
        name = "late"  # the old spelling: placement="late" alone meant the late block
    try:
        logits = fuses_logits(name)
    except UnknownNameError as e:
        raise UnknownNameError(f"model.fusion: {e}") from None
    if logits:
        placement = "late"
        if num_classes is not None:
            block_config.setdefault("out_dim", num_classes)
    if placement == "early":
        return FusionChoice("early", None, {})
    return FusionChoice(placement, name, block_config)


def unimodal(model_config: Mapping[str, Any], modality: str) -> Dict[str, Any]:
    """``model_config`` as its one-modality baseline: ``modality``'s encoder(s) -> head, no fusion block.

    -> a new dict: ``encoders`` keeps only ``modality``, ``placement`` is
    "middle", ``fusion`` :data:`NO_FUSION` and ``fusion_config`` empty; the
    other keys are copied.

    Raises:
      ModelConfigError: ``modality`` has no encoder in ``model.encoders``.
    """
    model = _plain(model_config)
    encoders = _plain(model.get("encoders"))
    if not encoders.get(modality):
        raise ModelConfigError(
            f"model.encoders.{modality}: a unimodal baseline needs an encoder for it, got "
            f"{encoders.get(modality)!r} (encoders: {sorted(encoders)})"
        )
    return dict(model, encoders={modality: encoders[modality]}, placement="middle", fusion=NO_FUSION,
                fusion_config={})
