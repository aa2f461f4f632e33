"""Two-tower zero-shot / retrieval on a converted CLIP or SigLIP checkpoint.

The model is :class:`mmjax.models.contrastive.ContrastiveModel` with the
checkpoint's two towers as ``{encoder: "pretrained", path: DIR, tower: ...}``,
``project=False`` (the towers' pooled outputs are already ``image_embeds`` /
``text_embeds``) and the checkpoint's ``logit_scale`` (and SigLIP's
``logit_bias``) as the pair's ``log_scale`` / ``bias``. Then
``model.logits("image", "text", ...)`` is ``transformers``' ``logits_per_image``.

>>> model, variables, prep = dual_encoder("/models/clip-vit-base-patch32")
>>> img = model.apply(variables, "image", prep["image"](uint8_images), method="embed")      # (B, P) unit
>>> txt = model.apply(variables, "text", *prep["text"](["a photo of a cat"]), method="embed")
>>> logits = model.apply(variables, "image", "text", img, txt, method="logits")            # (B, N)

In a training config the same model is
``model={towers: {image: {encoder: pretrained, path: DIR, tower: vision}, text: {..., tower: text}},
loss: clip | siglip, project: False}`` with ``init_from.pretrained=DIR`` (no target: every tower
whose path is DIR and the pair's logit parameters are loaded, see :func:`contrastive_params`).
"""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import numpy as np

from mmjax.encoders import hf
from mmjax.encoders.hf.weights import HFCheckpointError, read_config, read_state_dict


def loss_name(cfg: Mapping[str, Any]) -> str:
    """"clip" or "siglip": the contrastive loss (and logit form) of a two-tower config.json."""
    fam = hf.family(cfg)
    if fam not in ("clip", "siglip") or hf.towers(cfg) != ("vision", "text"):
        raise HFCheckpointError(f"a dual encoder needs a two-tower CLIP or SigLIP checkpoint "
                                f"(model_type clip or siglip), got model_type {cfg.get('model_type')!r}")
    return fam


def logit_params(state: Mapping[str, Any], cfg: Mapping[str, Any]) -> Dict[str, np.ndarray]:
    """The checkpoint's ``logit_scale`` (and SigLIP's ``logit_bias``) -> ``PairLogits`` params (scalars)."""
    fam = loss_name(cfg)
    names = {"log_scale": "logit_scale", **({"bias": "logit_bias"} if fam == "siglip" else {})}
    out = {}
    for ours, theirs in names.items():
        if theirs not in state:
            raise HFCheckpointError(f"{fam}: no {theirs} in the checkpoint (save the two-tower model)")
        value = np.asarray(state[theirs], np.float32)
        if value.size != 1:
            raise HFCheckpointError(f"{fam}: {theirs} has shape {value.shape}, expected a scalar")
        out[ours] = value.reshape(())
    return out


def _same_dir(a: str, b: str) -> bool:
    return os.path.realpath(str(a)) == os.path.realpath(str(b))


def contrastive_params(model_dir: str, towers: Mapping[str, Mapping[str, Any]]) -> Dict[str, Any]:
    """Params of a ``ContrastiveModel(towers=towers)`` from a CLIP / SigLIP directory (float32 numpy).

    Every tower ``{encoder: "pretrained", path: model_dir, tower: t}`` gets the converted tower ``t``
    (at ``encoders_<modality>``); every pair of two such towers gets the checkpoint's logit
    parameters (at ``pair_logits_<a>_<b>``). Other towers are left out (they keep their own init).
    """
    cfg, state = read_config(model_dir), read_state_dict(model_dir)
    logits = logit_params(state, cfg)
    mine = {m: t.get("tower") for m, t in towers.items()
            if t.get("encoder") == "pretrained" and _same_dir(t.get("path", ""), model_dir)}
    if not mine:
        raise HFCheckpointError(f"init_from.pretrained {model_dir!r}: no contrastive tower has "
                                f"encoder 'pretrained' with this path (towers: {sorted(towers)})")
    params: Dict[str, Any] = {f"encoders_{m}": hf.convert(state, cfg, t) for m, t in mine.items()}
    chosen = sorted(mine)
    for i, a in enumerate(chosen):
        for b in chosen[i + 1:]:
            params[f"pair_logits_{a}_{b}"] = dict(logits)
    return params


def dual_towers(model_dir: str, image: str = "image", text: str = "text",
                **options: Any) -> Dict[str, Dict[str, Any]]:
    """The ``towers`` mapping of the two converted towers (``options``: see ``hf.MODULE_OPTIONS``)."""
    return {image: {"encoder": "pretrained", "path": str(model_dir), "tower": "vision", **options},
            text: {"encoder": "pretrained", "path": str(model_dir), "tower": "text", **options}}


def dual_encoder(model_dir: str, *, image: str = "image", text: str = "text", max_len: Optional[int] = None,
                 **options: Any) -> Tuple[Any, Dict[str, Any], Dict[str, Optional[Callable]]]:
    """A CLIP / SigLIP directory -> ``(ContrastiveModel, variables, {image: preprocess, text: tokenize})``.

    ``model.apply(variables, image, pixel_values (B, H, W, C), method="embed")`` gives the unit
    ``image_embeds`` (B, P) and ``(variables, text, ids (N, L), mask (N, L), method="embed")`` the
    unit ``text_embeds`` (N, P); ``method="logits"`` on them gives ``logits_per_image`` (B, N).
    The preprocessors are those of :func:`hf.from_transformers` (None where the directory has none).
    ``options``: tower options (``dtype``, ``param_dtype``, ...), e.g. ``dtype=jnp.bfloat16``.
    """
    from mmjax.models.contrastive import ContrastiveModel

    cfg = read_config(model_dir)
    towers = dual_towers(model_dir, image, text, **options)
    model = ContrastiveModel(towers=towers, loss=loss_name(cfg), project=False,
                             **{k: options[k] for k in ("dtype", "param_dtype") if k in options})
    params = contrastive_params(model_dir, towers)
    params = {k: hf._cast(v, options.get("param_dtype") if k.startswith("encoders_") else None)
              for k, v in params.items()}  # PairLogits keeps float32 params
    prep = {m: (hf.preprocessor(model_dir, cfg, t["tower"], max_len)
                if hf._has_preprocessing(model_dir, t["tower"]) else None) for m, t in towers.items()}
    return model, {"params": params}, prep


__all__ = ["dual_encoder", "dual_towers", "contrastive_params", "logit_params", "loss_name"]
