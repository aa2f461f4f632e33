"""A multimodal classifier assembled from config strings.

``Classifier`` = per-modality encoders -> fusion block -> head, with the fusion
placement a config choice (:func:`mmjax.models.fusion_choice.resolve` reads
``placement`` and ``fusion``; its table lists every spelling):

* ``middle`` (default): each modality is encoded on its own, the fusion block
  combines the per-modality ``Encoded`` features, an MLP head maps to logits.
  ``fusion="none"``: one modality, encoder -> head.
* ``early``: each modality is turned into tokens (by its encoder(s) when given,
  else by a linear projection of the raw features), projected to a common
  width, tagged with a learned modality embedding, concatenated along tokens
  and run through one shared ``TransformerStack`` (:mod:`mmjax.models.early`);
  the masked mean over tokens goes to the head. No fusion block.
* ``late`` (decision-level; ``fusion="late"``, or the old spelling
  ``placement="late"``): each modality gets its own head; the per-modality
  logits (B, C) are combined by the fusion block.

>>> model = Classifier(num_classes=10, encoders={"image": {"name": "cnn"},
...                    "audio": [{"name": "audio_cnn"}, {"name": "lstm"}]},
...                    fusion="concat", fusion_config={"out_dim": 128})
>>> logits = model.apply(variables, batch, train=False)   # (B, 10)
"""
from __future__ import annotations

import numbers
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax import encoders as encoder_registry
from mmjax import fusion as fusion_registry
from mmjax.layers import dense
from mmjax.models import early
from mmjax.models.fusion_choice import (DEFAULT_FUSION, DEFAULT_PLACEMENT, NO_FUSION, PLACEMENTS, FusionChoice,
                                        ModelConfigError, resolve)
from mmjax.registry import BadSizeError, check_sizes
from mmjax.sharding import CLASSES, FUSION_IN, MLP
from mmjax.types import Encoded

Array = jax.Array

# NO_FUSION, PLACEMENTS and ModelConfigError live in fusion_choice; they have always been imported from here.
__all__ = ["NO_FUSION", "PLACEMENTS", "Classifier", "Head", "ModelConfigError", "build_classifier",
           "combine_encoded", "masked_inputs_zeroed"]


def _encoder_specs(modality: str, spec: Any) -> Tuple[Dict[str, Any], ...]:
    """One spec ({"name": ..., **kwargs}) or a list of them -> tuple of dicts."""
    specs = spec if isinstance(spec, (list, tuple)) else (spec,)
    out = []
    for s in specs:
        s = dict(s)
        if "name" not in s:
            raise ModelConfigError(
                f"model.encoders.{modality}: each encoder spec needs a 'name' key, got {sorted(s)}"
            )
        out.append(s)
    if not out:
        raise ModelConfigError(f"model.encoders.{modality}: no encoder given")
    return tuple(out)


def combine_encoded(parts: Sequence[Encoded]) -> Encoded:
    """Combines several encoders' outputs for one modality.

    Pooled vectors are concatenated along features, (B, sum D_k). Tokens are
    concatenated along the token axis when all widths agree; otherwise the
    combined pooled vector becomes the single token (B, 1, sum D_k).
    """
    if len(parts) == 1:
        return parts[0]
    pooled = jnp.concatenate([p.pooled for p in parts], axis=-1)
    widths = {p.tokens.shape[-1] for p in parts}
    if len(widths) == 1:
        tokens = jnp.concatenate([p.tokens for p in parts], axis=1)
        mask = jnp.concatenate([p.mask for p in parts], axis=1)
    else:
        tokens = pooled[:, None, :]
        mask = jnp.ones(pooled.shape[:1] + (1,), bool)
    return Encoded(pooled=pooled, tokens=tokens, mask=mask)


class Head(nn.Module):
    """(B, F) -> hidden Dense/GELU/Dropout layers -> (B, num_classes) logits (float32)."""

    num_classes: int
    hidden: Sequence[int] = ()
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        h = x.astype(self.dtype)
        last = FUSION_IN
        for i, width in enumerate(self.hidden):
            h = dense(width, axes=(last, MLP), dtype=self.dtype, param_dtype=self.param_dtype, name=f"hidden_{i}")(h)
            h = nn.gelu(h)
            last = MLP
        h = nn.Dropout(self.dropout_rate)(h, deterministic=not train)
        logits = dense(self.num_classes, axes=(last, CLASSES), dtype=self.dtype,
                       param_dtype=self.param_dtype, name="out")(h)
        # The loss is computed in float32 whatever the compute dtype.
        return logits.astype(jnp.float32)


def masked_inputs_zeroed(inputs: Mapping[str, Array], modality_mask: Mapping[str, Array]) -> Dict[str, Array]:
    """Inputs with the rows of missing modalities set to zero before any encoder sees them.

    A missing row may hold anything (NaN included); zeroing only the encoder's output would
    keep the forward pass finite but not the gradient (0 * NaN in the encoder's backward pass).
    """
    out = dict(inputs)
    for m, present in modality_mask.items():
        x = out[m]
        keep = jnp.reshape(jnp.asarray(present, bool), (-1,) + (1,) * (x.ndim - 1))
        out[m] = jnp.where(keep, x, jnp.zeros((), x.dtype))
    return out


class Classifier(nn.Module):
    """Multimodal classifier: ``apply(variables, batch, train=...) -> logits (B, C)``.

    ``batch`` is the nested batch dict of ARCHITECTURE.md: ``inputs`` (modality ->
    array), optional ``token_mask`` (modality -> (B, L) bool) and
    ``modality_mask`` (modality -> (B,) bool). Other keys (``label``...) are ignored.

    Attributes:
      num_classes: C.
      encoders: modality -> encoder spec ``{"name": ..., **kwargs}`` or a list
        of specs whose outputs are combined (:func:`combine_encoded`). In
        ``early`` placement a modality may be left out of ``encoders`` (or map
        to None): its raw features are linearly projected to tokens.
      fusion: fusion block name; ``"late"`` (any block whose class says
        ``fuses_logits``) means decision-level fusion; ``"none"``: one modality, no block.
      fusion_config: kwargs of the fusion block.
      placement: "early", "middle" or "late" (``placement="late"`` with the default
        ``fusion="concat"`` is the old spelling of ``fusion="late"``).
      head_hidden: widths of the head's hidden layers.
      dropout_rate: dropout before the output layer.
      early_width / early_layers / early_heads / early_mlp_dim: the shared
        transformer of ``early`` placement.
      early_patch_size: images (B, H, W, C) are split into patches of this size.
      early_vocab_size: int token ids (B, L) are embedded with this vocabulary.
      early_max_len: length of the learned position table per modality.
    """

    num_classes: int
    encoders: Mapping[str, Any]
    fusion: str = DEFAULT_FUSION
    fusion_config: Mapping[str, Any] = None  # type: ignore[assignment]
    placement: str = DEFAULT_PLACEMENT
    head_hidden: Sequence[int] = ()
    dropout_rate: float = 0.0
    early_width: int = 64
    early_layers: int = 2
    early_heads: int = 4
    early_mlp_dim: int = 128
    early_patch_size: int = 4
    early_vocab_size: int = 0
    early_max_len: int = 512
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def _choice(self) -> FusionChoice:
        return resolve({"placement": self.placement, "fusion": self.fusion, "encoders": self.encoders,
                        "fusion_config": self.fusion_config or {}}, num_classes=self.num_classes)

    def _check(self, batch: Mapping[str, Any], placement: str) -> Dict[str, Array]:
        if not isinstance(batch, Mapping) or "inputs" not in batch:
            raise ModelConfigError("Classifier: batch must be a dict with an 'inputs' dict (modality -> array)")
        inputs = dict(batch["inputs"])
        wanted = set(self.encoders)
        missing = sorted(wanted - set(inputs))
        if missing:
            raise ModelConfigError(
                f"Classifier: model.encoders names modalities {missing} that are not in batch['inputs'] "
                f"(which has {sorted(inputs)})"
            )
        if placement != "early":
            # Extra modalities without an encoder are ignored in middle/late placement.
            inputs = {m: inputs[m] for m in wanted}
        return inputs

    def _encode(self, modality: str, x: Array, mask: Optional[Array], train: bool) -> Encoded:
        parts = []
        for k, spec in enumerate(_encoder_specs(modality, self.encoders[modality])):
            spec = dict(spec)
            name = spec.pop("name")
            spec.setdefault("dtype", self.dtype)
            spec.setdefault("param_dtype", self.param_dtype)
            enc = _build(encoder_registry.ENCODERS, name, spec, f"model.encoders.{modality}", f"encoder_{modality}_{k}")
            parts.append(enc(x, mask, train=train))
        return combine_encoded(parts)

    def _head(self, name: str) -> Head:
        return Head(self.num_classes, tuple(self.head_hidden), self.dropout_rate, self.dtype, self.param_dtype,
                    name=name)

    def _block(self, choice: FusionChoice) -> nn.Module:
        cfg = dict(choice.block_config)
        cfg.setdefault("dtype", self.dtype)
        cfg.setdefault("param_dtype", self.param_dtype)
        return _build(fusion_registry.FUSION, choice.block, cfg, "model.fusion_config", "fusion")

    @nn.compact
    def __call__(self, batch: Mapping[str, Any], *, train: bool = False) -> Array:
        choice = self._choice()
        inputs = self._check(batch, choice.placement)
        token_mask = dict(batch.get("token_mask") or {})
        modality_mask = {m: v for m, v in dict(batch.get("modality_mask") or {}).items() if m in inputs}
        inputs = masked_inputs_zeroed(inputs, modality_mask)
        if choice.placement == "early":
            pooled = early.early_pooled(self, inputs, token_mask, modality_mask, train)
            return self._head("head")(pooled, train=train)

        encoded = {m: self._encode(m, inputs[m], token_mask.get(m), train) for m in sorted(inputs)}
        if choice.placement == "late":
            # Decision-level: one head per modality, their logits (B, C) combined by the block.
            logits = {m: self._head(f"head_{m}")(encoded[m].pooled, train=train) for m in sorted(encoded)}
            out = self._block(choice)(logits, modality_mask or None, train=train)
            if out.shape[-1] != self.num_classes:
                out = self._head("head")(out, train=train)
            return out.astype(jnp.float32)
        if choice.block is None:
            # A unimodal baseline: encoder -> head, no fusion block.
            (m, enc), = encoded.items()
            pooled = enc.pooled
            if modality_mask and m in modality_mask:
                pooled = jnp.where(modality_mask[m][:, None], pooled, 0)
            return self._head("head")(pooled.astype(self.dtype), train=train)
        fused = self._block(choice)(encoded, modality_mask or None, train=train)
        return self._head("head")(fused, train=train)


def _build(registry, name: str, kwargs: Dict[str, Any], where: str, module_name: str) -> nn.Module:
    """registry entry ``name`` with ``kwargs``, as the submodule ``module_name``; config errors name ``where``."""
    constructor = registry.get(name)
    try:
        check_sizes(constructor, kwargs, where + ".")
    except BadSizeError as e:
        raise ModelConfigError(f"{e} ({registry.family} {name!r})") from None
    try:
        return constructor(**kwargs, name=module_name)
    except TypeError as e:
        raise ModelConfigError(f"{where}: bad options for {registry.family} {name!r}: {e}") from None


def build_classifier(model_config: Mapping[str, Any], num_classes: int) -> Classifier:
    """Builds a :class:`Classifier` from a config dict (``config.model``) and C.

    ``dtype``/``param_dtype`` may be given as strings ("bfloat16", "float32").
    """
    cfg = {k: v for k, v in dict(model_config).items() if k != "name"}
    for key in ("dtype", "param_dtype"):
        if isinstance(cfg.get(key), str):
            try:
                cfg[key] = jnp.dtype(cfg[key])
            except TypeError:
                raise ModelConfigError(f"model.{key}: unknown dtype {cfg[key]!r}") from None
    cfg["encoders"] = {m: (_plain(s) if s else None) for m, s in dict(cfg.get("encoders", {})).items()}
    if "fusion_config" in cfg:
        cfg["fusion_config"] = _plain(cfg["fusion_config"])
    if "head_hidden" in cfg:
        cfg["head_hidden"] = tuple(cfg["head_hidden"])
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
        raise ModelConfigError(f"the classifier needs num_classes >= 1 (from the dataset), got {num_classes!r}")
    rate = cfg.get("dropout_rate", Classifier.dropout_rate)
    if not 0 <= float(rate) < 1:
        raise ModelConfigError(f"model.dropout_rate must be in [0, 1), got {rate!r}")
    known = set(Classifier.__dataclass_fields__) - {"parent", "name"}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ModelConfigError(f"model: unknown classifier options {unknown}; known: {sorted(known - {'num_classes'})}")
    return Classifier(num_classes=num_classes, **cfg)


def _plain(x: Any) -> Any:
    """ConfigDict / FrozenDict / lists -> plain dicts and tuples (hashable-friendly module attributes)."""
    if hasattr(x, "to_dict"):
        x = x.to_dict()
    if isinstance(x, Mapping):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return tuple(_plain(v) for v in x)
    return x
