"""A multimodal classifier assembled from config strings.

``Classifier`` = per-modality encoders -> fusion block -> head, with the fusion
placement a config choice:

* ``middle`` (default): each modality is encoded on its own, the fusion block
  combines the per-modality ``Encoded`` features, an MLP head maps to logits.
* ``early``: each modality is turned into tokens (by its encoder(s) when given,
  else by a linear projection of the raw features), projected to a common
  width, tagged with a learned modality embedding, concatenated along tokens
  and run through one shared ``TransformerStack``; the masked mean over tokens
  goes to the head. No fusion block.
* ``late``: each modality gets its own head; the per-modality logits (B, C)
  are combined by the ``late`` fusion block (looked up by registry name).

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
from mmjax import errors
from mmjax import fusion as fusion_registry
from mmjax.registry import BadSizeError, check_sizes
from mmjax.layers import TransformerStack, dense
from mmjax.layers.masked import masked_mean
from mmjax.sharding import CLASSES, EMBED, FUSION_IN, MLP, logical
from mmjax.types import Encoded

Array = jax.Array

PLACEMENTS = ("early", "middle", "late")
# model.fusion value for a single-modality model (a unimodal baseline): no fusion block.
NO_FUSION = "none"


class ModelConfigError(errors.ConfigError):
    """Bad classifier config: placement, encoder spec or inputs that do not match it."""


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
      fusion: fusion block name (``middle``) or ``"late"`` (``late`` placement).
      fusion_config: kwargs of the fusion block.
      placement: "early", "middle" or "late".
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
    fusion: str = "concat"
    fusion_config: Mapping[str, Any] = None  # type: ignore[assignment]
    placement: str = "middle"
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

    def _check(self, batch: Mapping[str, Any]) -> Dict[str, Array]:
        if self.placement not in PLACEMENTS:
            raise ModelConfigError(f"model.placement must be one of {PLACEMENTS}, got {self.placement!r}")
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
        if self.placement != "early":
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

    @nn.compact
    def __call__(self, batch: Mapping[str, Any], *, train: bool = False) -> Array:
        inputs = self._check(batch)
        token_mask = dict(batch.get("token_mask") or {})
        modality_mask = {m: v for m, v in dict(batch.get("modality_mask") or {}).items() if m in inputs}
        inputs = masked_inputs_zeroed(inputs, modality_mask)
        if self.placement == "early":
            return self._early(inputs, token_mask, modality_mask, train)

        encoded = {m: self._encode(m, inputs[m], token_mask.get(m), train) for m in sorted(inputs)}
        head = lambda name: Head(self.num_classes, tuple(self.head_hidden), self.dropout_rate,  # noqa: E731
                                 self.dtype, self.param_dtype, name=name)
        if self.placement == "middle" and self.fusion == NO_FUSION:
            # A unimodal baseline: encoder -> head, no fusion block.
            if len(encoded) != 1:
                raise ValueError(f"model.fusion={NO_FUSION!r} needs exactly one modality, got {sorted(encoded)}")
            (m, enc), = encoded.items()
            pooled = enc.pooled
            if modality_mask and m in modality_mask:
                pooled = jnp.where(modality_mask[m][:, None], pooled, 0)
            return head("head")(pooled.astype(self.dtype), train=train)
        if self.placement == "middle":
            cfg = dict(self.fusion_config or {})
            cfg.setdefault("dtype", self.dtype)
            cfg.setdefault("param_dtype", self.param_dtype)
            fused = _build(fusion_registry.FUSION, self.fusion, cfg, "model.fusion_config", "fusion")(
                encoded, modality_mask or None, train=train
            )
            return head("head")(fused, train=train)

        # late: one head per modality, combined by the late fusion block.
        logits = {m: head(f"head_{m}")(encoded[m].pooled, train=train) for m in sorted(encoded)}
        cfg = dict(self.fusion_config or {})
        cfg.setdefault("dtype", self.dtype)
        cfg.setdefault("param_dtype", self.param_dtype)
        name = self.fusion if self.fusion != "concat" else "late"
        if name == "late":
            cfg.setdefault("out_dim", self.num_classes)
        out = _build(fusion_registry.FUSION, name, cfg, "model.fusion_config", "fusion")(
            logits, modality_mask or None, train=train
        )
        if out.shape[-1] != self.num_classes:
            out = head("head")(out, train=train)
        return out.astype(jnp.float32)

    def _tokens(self, modality: str, x: Array, mask: Optional[Array], train: bool) -> Tuple[Array, Array]:
        """Raw input or encoder output -> ((B, T, early_width) tokens, (B, T) mask)."""
        spec = self.encoders.get(modality)
        if spec:
            enc = self._encode(modality, x, mask, train)
            tokens, tmask = enc.tokens, enc.mask
        elif jnp.issubdtype(x.dtype, jnp.integer):
            if x.ndim != 2 or not self.early_vocab_size:
                raise ModelConfigError(
                    f"early fusion: modality {modality!r} has integer ids {x.shape}; give it an encoder "
                    "in model.encoders or set model.early_vocab_size"
                )
            tokens = nn.Embed(self.early_vocab_size, self.early_width, dtype=self.dtype, param_dtype=self.param_dtype,
                              embedding_init=logical(nn.initializers.normal(0.02), ("vocab", EMBED)),
                              name=f"embed_{modality}")(x)
            tmask = (x != 0) if mask is None else mask
        elif x.ndim == 2:  # (B, D): one token
            tokens, tmask = x[:, None, :], jnp.ones(x.shape[:1] + (1,), bool)
        elif x.ndim == 3:  # (B, T, D) or audio-like sequences of frames
            tokens = x
            tmask = jnp.ones(x.shape[:2], bool) if mask is None else mask
        elif x.ndim == 4:  # (B, H, W, C) image: non-overlapping patches
            p = self.early_patch_size
            b, h, w, c = x.shape
            if h % p or w % p:
                raise ModelConfigError(
                    f"early fusion: image {modality!r} of size {h}x{w} is not divisible by early_patch_size={p}"
                )
            tokens = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, -1, p * p * c)
            tmask = jnp.ones(tokens.shape[:2], bool)
        else:
            raise ModelConfigError(
                f"early fusion: modality {modality!r} input of shape {x.shape} has no default tokenizer; "
                "give it an encoder in model.encoders"
            )
        if tokens.shape[1] > self.early_max_len:
            raise ModelConfigError(
                f"early fusion: modality {modality!r} has {tokens.shape[1]} tokens > early_max_len={self.early_max_len}"
            )
        tokens = dense(self.early_width, axes=(FUSION_IN, EMBED), dtype=self.dtype,
                       param_dtype=self.param_dtype, name=f"proj_{modality}")(tokens.astype(self.dtype))
        pos = self.param(f"pos_{modality}", logical(nn.initializers.normal(0.02), ("length", EMBED)),
                         (self.early_max_len, self.early_width), self.param_dtype)
        kind = self.param(f"modality_{modality}", logical(nn.initializers.normal(0.02), (EMBED,)),
                          (self.early_width,), self.param_dtype)
        tokens = tokens + pos[None, : tokens.shape[1]].astype(self.dtype) + kind.astype(self.dtype)
        return tokens, tmask.astype(bool)

    def _early(self, inputs, token_mask, modality_mask, train) -> Array:
        toks, masks = [], []
        for m in sorted(inputs):
            t, tm = self._tokens(m, inputs[m], token_mask.get(m), train)
            if m in modality_mask:
                present = modality_mask[m].astype(bool)
                tm = tm & present[:, None]
            t = jnp.where(tm[..., None], t, 0)
            toks.append(t)
            masks.append(tm)
        tokens = jnp.concatenate(toks, axis=1)
        mask = jnp.concatenate(masks, axis=1)
        h = TransformerStack(self.early_layers, self.early_heads, self.early_mlp_dim, self.dropout_rate,
                             dtype=self.dtype, param_dtype=self.param_dtype, name="shared")(h_in := tokens, mask, train=train)
        del h_in
        pooled = masked_mean(h, mask)
        return Head(self.num_classes, tuple(self.head_hidden), self.dropout_rate, self.dtype,
                    self.param_dtype, name="head")(pooled, train=train)


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
    rate = cfg.get("dropout_rate", 0.0)
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
