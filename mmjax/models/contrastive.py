"""Contrastive dual (or multi) encoder: CLIP / SigLIP style.

Each tower is an encoder from the registry plus a bias-free linear projection
of its pooled output to a shared ``embed_dim``-dimensional space, followed by
L2 normalisation. Every unordered pair of towers (a, b), a < b by name, gets
its own learnable logit parameters (``log_scale``, and ``bias`` for SigLIP),
since different modality pairs reach different similarity ranges. The loss
is the mean over pairs of the pairwise loss.

>>> model = ContrastiveModel(
...     towers={"image": {"encoder": "mlp", "features": (64,)},
...             "text": {"encoder": "mlp", "features": (64,)}},
...     embed_dim=32, loss="siglip")
>>> variables = model.init(rng, batch)
>>> emb = model.apply(variables, batch)                 # {"image": (B, 32), "text": (B, 32)}
>>> loss, metrics = model.apply(variables, batch, method="loss_fn")
"""
from __future__ import annotations

import itertools
from typing import Any, Dict, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax import encoders as encoder_registry
from mmjax import errors
from mmjax.layers import dense
from mmjax.losses import contrastive as losses
from mmjax.sharding import EMBED, FUSION_OUT, BatchShards

Array = jax.Array
LOSSES = ("clip", "siglip")


class ContrastiveConfigError(errors.ConfigError):
    """Bad contrastive model config or batch (towers, loss name, missing modality)."""


def l2_normalize(x: Array, eps: float = 1e-6) -> Array:
    """x (..., E) -> x / max(||x||, eps), computed in f32 (bf16 norms are too coarse)."""
    x32 = x.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(x32 * x32, axis=-1, keepdims=True))
    return (x32 / jnp.maximum(norm, eps)).astype(x.dtype)


class PairLogits(nn.Module):
    """The learnable logit parameters of one tower pair: ``log_scale`` (CLIP:
    log(1/0.07); SigLIP: t' = log 10) and, for SigLIP, ``bias`` (-10)."""

    loss: str = "clip"

    @nn.compact
    def __call__(self) -> Tuple[Array, Optional[Array]]:
        if self.loss == "clip":
            init = losses.CLIP_INIT_LOG_SCALE
        else:
            init = losses.SIGLIP_INIT_LOG_SCALE
        log_scale = self.param("log_scale", nn.initializers.constant(init), (), jnp.float32)
        bias = None
        if self.loss == "siglip":
            bias = self.param("bias", nn.initializers.constant(losses.SIGLIP_INIT_BIAS), (), jnp.float32)
        return log_scale, bias


class ContrastiveModel(nn.Module):
    """Towers -> unit embeddings; pairwise CLIP or SigLIP loss.

    Attributes:
      towers: modality -> {"encoder": registry name, **encoder kwargs}. At least two.
      embed_dim: E, the shared embedding width.
      loss: "clip" (softmax InfoNCE) or "siglip" (pairwise sigmoid).
      project: add the linear projection to ``embed_dim`` (False: the towers'
        pooled outputs are the embeddings, as for converted CLIP / SigLIP
        towers whose pooled output is already the checkpoint's projection).
    """

    towers: Mapping[str, Mapping[str, Any]]
    embed_dim: int = 128
    loss: str = "clip"
    project: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        if len(self.towers) < 2:
            raise ContrastiveConfigError(
                f"contrastive: towers needs at least two modalities, got {sorted(self.towers)}"
            )
        if self.loss not in LOSSES:
            raise ContrastiveConfigError(f"contrastive: loss must be one of {LOSSES}, got {self.loss!r}")
        encs, projs = {}, {}
        for m in sorted(self.towers):
            cfg = dict(self.towers[m])
            if "encoder" not in cfg:
                raise ContrastiveConfigError(
                    f"contrastive: towers[{m!r}] needs an 'encoder' key (a registry name), got {sorted(cfg)}"
                )
            name = cfg.pop("encoder")
            cfg.setdefault("dtype", self.dtype)
            cfg.setdefault("param_dtype", self.param_dtype)
            encs[m] = encoder_registry.create(name, **cfg)
            if not self.project:
                continue
            projs[m] = dense(
                self.embed_dim,
                axes=(EMBED, FUSION_OUT),
                use_bias=False,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
            )
        self.encoders = encs
        self.projections = projs
        self.pair_logits = {
            f"{a}_{b}": PairLogits(self.loss) for a, b in self.pairs()
        }

    def pairs(self) -> Tuple[Tuple[str, str], ...]:
        """Tower pairs (a, b), a < b, in sorted order."""
        return tuple(itertools.combinations(sorted(self.towers), 2))

    def embed(self, modality: str, inputs: Array, mask: Optional[Array] = None, *, train: bool = False) -> Array:
        """One tower: raw input -> (B, E) unit embedding."""
        pooled = self.encoders[modality](inputs, mask, train=train).pooled
        return l2_normalize(self.projections[modality](pooled) if self.project else pooled)

    def __call__(self, batch: Mapping[str, Any], *, train: bool = False) -> Dict[str, Array]:
        """batch (see ARCHITECTURE.md) -> {modality: (B, E) unit embeddings}."""
        inputs = batch.get("inputs", {})
        missing = sorted(set(self.towers) - set(inputs))
        if missing:
            raise ContrastiveConfigError(
                f"contrastive: batch['inputs'] lacks the tower modalities {missing} (has {sorted(inputs)})"
            )
        token_mask = batch.get("token_mask", {}) or {}
        out = {m: self.embed(m, inputs[m], token_mask.get(m), train=train) for m in sorted(self.towers)}
        for a, b in self.pairs():  # touch the pair params so ``init`` creates them
            self.pair_logits[f"{a}_{b}"]()
        return out

    def logit_params(self) -> Dict[Tuple[str, str], Tuple[Array, Optional[Array]]]:
        """(a, b) -> (log_scale, bias or None) for every tower pair."""
        return {(a, b): self.pair_logits[f"{a}_{b}"]() for a, b in self.pairs()}

    def logits(self, a: str, b: str, emb_a: Array, emb_b: Array) -> Array:
        """Unit embeddings (Na, E) of tower ``a`` and (Nb, E) of ``b`` -> (Na, Nb) f32 pair logits:
        ``scale * emb_a @ emb_b.T`` (+ ``bias`` for SigLIP), the scale as in the loss (CLIP's clamped
        to 100). For converted CLIP / SigLIP: ``transformers``' ``logits_per_image`` with a = image."""
        pair = tuple(sorted((a, b)))
        if pair not in self.pairs():
            raise ContrastiveConfigError(f"contrastive: no tower pair {pair}; pairs are {list(self.pairs())}")
        log_scale, bias = self.pair_logits[f"{pair[0]}_{pair[1]}"]()
        scale = losses.clip_scale(log_scale) if self.loss == "clip" else jnp.exp(log_scale)
        out = scale * (emb_a.astype(jnp.float32) @ emb_b.astype(jnp.float32).T)
        return out if bias is None else out + bias

    def loss_fn(
        self,
        batch: Mapping[str, Any],
        *,
        train: bool = False,
        shards: BatchShards = BatchShards(),
    ) -> Tuple[Array, Dict[str, Array]]:
        """Mean pairwise loss over the global batch -> (scalar, metrics).

        ``shards`` says where the batch's rows are (the parallel runner passes it to the step):
        every example is a negative for every other one of the *global* batch in every mode,
        while no device builds the full (B, B) logit matrix when the rows are split.
        """
        emb = self(batch, train=train)
        metrics: Dict[str, Array] = {}
        total = 0.0
        for (a, b), (log_scale, bias) in self.logit_params().items():
            if self.loss == "clip":
                pair = shards.map(losses.clip_loss_shard, (emb[a], emb[b]), (log_scale,))
                metrics[f"scale/{a}_{b}"] = losses.clip_scale(log_scale)
            else:
                pair = shards.map(losses.siglip_loss_shard, (emb[a], emb[b]), (log_scale, bias))
                metrics[f"scale/{a}_{b}"] = jnp.exp(log_scale)
                metrics[f"bias/{a}_{b}"] = bias
            metrics[f"loss/{a}_{b}"] = pair
            total = total + pair
        loss = total / len(self.pairs())
        metrics["loss"] = loss
        return loss, metrics


__all__ = ["ContrastiveConfigError", "ContrastiveModel", "PairLogits", "l2_normalize"]
