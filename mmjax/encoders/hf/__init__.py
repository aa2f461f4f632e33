"""Pretrained towers from local Hugging Face model directories, numerically equal to ``transformers``.

=========  =====================================  ==========  =====================================
family     ``model_type`` (config.json)           towers      ``pooled``
=========  =====================================  ==========  =====================================
BERT       bert, roberta, xlm-roberta             text        ``pooler_output`` (or mean, option)
ViT        vit                                    vision      ``pooler_output`` (or [CLS], option)
CLIP       clip, clip_vision_model,               vision,     ``image_embeds`` / ``text_embeds``
           clip_text_model                        text        (projected, before L2 normalisation)
SigLIP     siglip, siglip_vision_model,           vision,     ``image_embeds`` / ``text_embeds``
           siglip_text_model                      text        (= the towers' ``pooler_output``)
Whisper    whisper (the encoder)                  audio       mean of ``tokens`` over time (no pooler)
AST        audio-spectrogram-transformer          audio       ``pooler_output`` (mean of [CLS], distill.)
VideoMAE   videomae                               video       ``fc_norm`` of the token mean (classifier
                                                              checkpoints), else the token mean
=========  =====================================  ==========  =====================================

``tokens`` is always the reference model's ``last_hidden_state``. A directory
holds ``config.json`` and ``model.safetensors`` (or ``pytorch_model.bin``, read
by a restricted unpickler); ``preprocessor_config.json`` / ``tokenizer.json``
are needed only for ``preprocess``. Nothing here imports torch or transformers.
Inputs follow the mmjax layouts: channels last for images (B, H, W, C) and
clips (B, F, H, W, C), time first for audio features (B, frames, n_mels)
(for Whisper the transpose of ``transformers``' ``input_features``).

>>> enc, variables, prep = from_transformers("/models/clip-vit-base-patch32", tower="vision")
>>> out = enc.apply(variables, prep(uint8_images))            # pooled (B, 512), tokens (B, 50, 768)
>>> txt, tvars, tok = from_transformers("/models/clip-vit-base-patch32", tower="text")
>>> out = txt.apply(tvars, *tok(["a photo of a cat"]))        # ids, mask from tokenizer.json

In a training config, ``{name: "pretrained", path: DIR, tower: "vision"}``
builds the module (from config.json alone); ``init_from.pretrained=DIR``
loads its weights (see :func:`pretrained_variables`). :func:`dual_encoder`
gives a CLIP / SigLIP directory as a contrastive model with the checkpoint's
logit scale (zero-shot, retrieval; :mod:`mmjax.encoders.hf.dual`);
:func:`sharded_variables` converts onto a mesh shard by shard
(:mod:`mmjax.encoders.hf.sharded`).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import flax.linen as nn

from mmjax.encoders.hf import audio_spectrogram, bert, clip, siglip, videomae, vit, whisper
from mmjax.encoders.hf.audio_preprocess import ASTFeatures, WhisperFeatures
from mmjax.encoders.hf.preprocess import ImagePreprocess, TextPreprocess, VideoPreprocess
from mmjax.encoders.hf.weights import HFCheckpointError, HFUnavailableError, read_config, read_state_dict
from mmjax.encoders.registry import register

MODULE_OPTIONS = ("pooling", "pooler", "normalize", "dropout_rate", "dtype", "param_dtype")


# The single-tower families: name -> (module, encoder class, tower).
SINGLE = {
    "bert": (bert, bert.BertEncoder, "text"),
    "vit": (vit, vit.ViTEncoder, "vision"),
    "whisper": (whisper, whisper.WhisperEncoder, "audio"),
    "ast": (audio_spectrogram, audio_spectrogram.ASTEncoder, "audio"),
    "videomae": (videomae, videomae.VideoMAEEncoder, "video"),
}
POOLER_FAMILIES = ("bert", "vit", "videomae")  # those whose checkpoints may or may not hold pooler weights


def family(cfg: Mapping[str, Any]) -> str:
    """"bert", "vit", "clip", "siglip", "whisper", "ast" or "videomae" for a config.json."""
    mt = cfg.get("model_type", "")
    for name, mod in (("bert", bert), ("vit", vit), ("clip", clip), ("siglip", siglip), ("whisper", whisper),
                      ("ast", audio_spectrogram), ("videomae", videomae)):
        if mt in mod.MODEL_TYPES:
            return name
    raise HFCheckpointError(f"unsupported model_type {mt!r}; supported: bert, roberta, xlm-roberta, vit, "
                            "clip(_vision_model/_text_model), siglip(_vision_model/_text_model), whisper, "
                            "audio-spectrogram-transformer, videomae")


def towers(cfg: Mapping[str, Any]) -> Tuple[str, ...]:
    """The towers a config holds: ("text",), ("vision",), ("audio",), ("video",) or ("vision", "text")."""
    fam, mt = family(cfg), cfg.get("model_type", "")
    if fam in SINGLE:
        return (SINGLE[fam][2],)
    if mt.endswith("_vision_model"):
        return ("vision",)
    return ("text",) if mt.endswith("_text_model") else ("vision", "text")


def _tower(cfg: Mapping[str, Any], tower: Optional[str], where: str) -> str:
    have = towers(cfg)
    if tower is None and len(have) == 1:
        return have[0]
    if tower not in have:
        raise HFCheckpointError(f"{where}: tower must be one of {list(have)}, got {tower!r}")
    return tower


def build_module(cfg: Mapping[str, Any], tower: Optional[str] = None, **options: Any) -> nn.Module:
    """The flax module of ``tower`` for a config.json; ``options``: see :data:`MODULE_OPTIONS`."""
    unknown = sorted(set(options) - set(MODULE_OPTIONS) - {"name", "parent"})
    if unknown:
        raise HFCheckpointError(f"pretrained encoder: unknown options {unknown}; known: {list(MODULE_OPTIONS)}")
    fam, tower = family(cfg), _tower(cfg, tower, "pretrained encoder")
    options = {k: v for k, v in options.items() if v is not None}
    if "pooling" in options and fam not in ("bert", "vit"):
        raise HFCheckpointError(f"{fam}: option pooling applies to bert and vit only")
    if "pooler" in options and fam not in POOLER_FAMILIES:
        raise HFCheckpointError(f"{fam}: option pooler applies to {', '.join(POOLER_FAMILIES)} only")
    if fam in SINGLE:
        mod, cls, _ = SINGLE[fam]
        return cls(**{**mod.module_kwargs(cfg), **options})
    mod = clip if fam == "clip" else siglip
    if tower == "vision":
        return clip.VisionTower(**mod.vision_kwargs(cfg), **options)
    return clip.TextTower(**mod.text_kwargs(cfg), **options)


def convert(state: Mapping[str, Any], cfg: Mapping[str, Any], tower: Optional[str] = None,
            pooler: Optional[bool] = None) -> Dict[str, Any]:
    """A checkpoint's tensors -> the params of :func:`build_module` (float32 numpy)."""
    fam, tower = family(cfg), _tower(cfg, tower, "convert")
    if fam in POOLER_FAMILIES:
        mod = SINGLE[fam][0]
        return mod.convert(state, cfg, pooler=mod.has_pooler(state) if pooler is None else pooler)
    if fam in SINGLE:
        return SINGLE[fam][0].convert(state, cfg)
    mod = clip if fam == "clip" else siglip
    return mod.convert_vision(state, cfg) if tower == "vision" else mod.convert_text(state, cfg)


def _cast(tree: Any, dtype: Any) -> Any:
    return jax.tree.map(lambda x: jnp.asarray(x, dtype or jnp.float32), tree)


def pretrained_variables(model_dir: str, tower: Optional[str] = None, *, pooler: Optional[bool] = None,
                         param_dtype: Any = None) -> Dict[str, Any]:
    """``{"params": ...}`` of a model directory, shaped like ``create("pretrained", path=model_dir,
    tower=tower).init(...)`` (unboxed arrays). With ``tower=None`` a two-tower checkpoint (CLIP, SigLIP)
    gives ``{"params": {"vision": ..., "text": ...}}``, so ``init_from.source`` picks one."""
    cfg, state = read_config(model_dir), read_state_dict(model_dir)
    have = towers(cfg)
    if tower is None and len(have) > 1:
        params = {t: convert(state, cfg, t, pooler) for t in have}
    else:
        params = convert(state, cfg, tower, pooler)
    return {"params": _cast(params, param_dtype)}


def preprocessor(model_dir: str, cfg: Mapping[str, Any], tower: str, max_len: Optional[int] = None) -> Callable:
    """The raw-input function of a tower: images -> pixel_values, clips -> (B, F, H, W, C), waveforms ->
    Whisper's / AST's features, or strings -> (ids, mask)."""
    if tower == "vision":
        return ImagePreprocess.from_dir(model_dir)
    if tower == "video":
        return VideoPreprocess.from_dir(model_dir)
    if tower == "audio":
        return (WhisperFeatures if family(cfg) == "whisper" else ASTFeatures).from_dir(model_dir)
    text_cfg = cfg.get("text_config") or cfg
    default = 128 if family(cfg) == "bert" else text_cfg["max_position_embeddings"]
    return text_preprocess(model_dir, max_len or default, cfg)


def text_preprocess(model_dir: str, max_len: int, cfg: Optional[Mapping[str, Any]] = None) -> TextPreprocess:
    """The directory's ``tokenizer.json`` as its text tower reads it: strings -> (ids, mask) (B, max_len).
    ``cfg``: its config.json (read when None; a directory without one holds a tokenizer alone)."""
    from mmjax.encoders.hf.weights import read_json

    cfg = read_json(model_dir, "config.json") if cfg is None else cfg
    # SigLIP's processor pads to max_length without an attention mask: the model attends over padding.
    return TextPreprocess(model_dir, max_len, mask_padding=cfg.get("model_type") not in siglip.MODEL_TYPES)


def from_transformers(model_dir: str, tower: Optional[str] = None, *, max_len: Optional[int] = None,
                      **options: Any) -> Tuple[nn.Module, Dict[str, Any], Callable]:
    """Converts a local Hugging Face model directory: ``(module, variables, preprocess)``.

    Args:
      model_dir: a directory written by ``save_pretrained`` (config.json + weights).
      tower: "vision" or "text" for CLIP / SigLIP (single-tower families need none;
        theirs is "text", "vision", "audio" or "video", see :func:`towers`).
      max_len: the text preprocessor's fixed length (default 128 for BERT, the
        position table's length for CLIP / SigLIP).
      options: module options (``dtype``, ``param_dtype``, ``dropout_rate``;
        ``pooling`` "pooler" | "mean" (BERT) | "cls" (ViT); ``normalize`` to
        L2-normalise ``pooled``).

    ``module.apply(variables, pixel_values (B, H, W, C))``, ``(variables, clips (B, F, H, W, C))``,
    ``(variables, features (B, frames, n_mels))`` or
    ``module.apply(variables, input_ids (B, L), mask (B, L))`` gives
    ``Encoded(pooled, tokens, mask)``; ``preprocess`` maps uint8 images
    (H, W, C) / (B, H, W, C) to pixel_values, uint8 clips (F, H, W, C) /
    (B, F, H, W, C) to clips, waveforms ((N,), (B, N) or a list; optional
    ``sampling_rate=`` checked against the checkpoint's) to features, or
    strings to ``(ids, mask)``; it is None when the directory has no
    preprocessor_config.json / tokenizer.json.
    """
    cfg, state = read_config(model_dir), read_state_dict(model_dir)
    tower = _tower(cfg, tower, model_dir)
    fam = family(cfg)
    if fam in POOLER_FAMILIES and "pooler" not in options:
        options["pooler"] = SINGLE[fam][0].has_pooler(state)
        if not options["pooler"] and fam != "videomae":
            options.setdefault("pooling", "mean" if fam == "bert" else "cls")
    module = build_module(cfg, tower, **options)
    params = convert(state, cfg, tower, options.get("pooler"))
    variables = {"params": _cast(params, options.get("param_dtype"))}
    prep = preprocessor(model_dir, cfg, tower, max_len) if _has_preprocessing(model_dir, tower) else None
    return module, variables, prep


def _has_preprocessing(model_dir: str, tower: str) -> bool:
    from pathlib import Path

    return (Path(model_dir) / ("tokenizer.json" if tower == "text" else "preprocessor_config.json")).is_file()


@register("pretrained")
def pretrained(path: str, tower: Optional[str] = None, **options: Any) -> nn.Module:
    """The encoder ``{name: "pretrained", path: DIR, tower: ...}``: the module of a Hugging Face directory,
    built from its config.json alone (its weights come from ``init_from.pretrained=DIR``)."""
    return build_module(read_config(path), tower, **options)


from mmjax.encoders.hf.dual import dual_encoder  # noqa: E402  (needs the names above)
from mmjax.encoders.hf.sharded import sharded_variables  # noqa: E402

__all__ = ["from_transformers", "dual_encoder", "sharded_variables", "pretrained_variables", "build_module", "convert", "family", "towers",
           "text_preprocess",
           "ImagePreprocess", "VideoPreprocess", "TextPreprocess", "WhisperFeatures", "ASTFeatures",
           "HFCheckpointError", "HFUnavailableError"]
