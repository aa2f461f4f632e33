"""Initialising part of a fresh model from elsewhere: a checkpoint, a pytree or pretrained weights.

``config.init_from`` = {path | params | pretrained, source, target}: see
:func:`apply_init_from`. Used by the training loop on a fresh start.
"""
from __future__ import annotations

from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple

import jax
import numpy as np

from mmjax.train.checkpoint import CheckpointError, load_params
from mmjax.train.parallel import Runner


def _graft(tree: Any, target: Sequence[str], loaded: Any, what: str) -> Any:
    """A copy of ``tree`` with the subtree at path ``target`` replaced by ``loaded`` (same structure/shapes)."""
    tree = jax.tree.map(lambda x: x, tree)  # a copy we may edit in place
    node = tree
    for p in target[:-1]:
        if not isinstance(node, Mapping) or p not in node:
            raise CheckpointError(f"init_from.target: no {p!r} in the model's {what} (has {sorted(node)})")
        node = node[p]
    if target and (not isinstance(node, Mapping) or target[-1] not in node):
        raise CheckpointError(f"init_from.target: no {target[-1]!r} in the model's {what} (has {sorted(node)})")
    current = node[target[-1]] if target else tree
    if jax.tree.structure(current) != jax.tree.structure(jax.tree.map(lambda x: x, loaded)):
        raise CheckpointError(f"init_from: the loaded {what} do not match the model's {what} at "
                              f"{'/'.join(target) or '(root)'!r}")

    def place(old, new):
        new = np.asarray(new)
        if new.shape != old.shape:
            raise CheckpointError(f"init_from: shape {new.shape} does not match model {what} {old.shape}")
        # Shard by shard: each (addressable) device gets only its slice, cast on the host per slice.
        return jax.make_array_from_callback(old.shape, old.sharding,
                                            lambda idx: np.asarray(new[idx], old.dtype))

    replaced = jax.tree.map(place, current, loaded)
    if not target:
        return replaced
    node[target[-1]] = replaced
    return tree


def _tower_mapping(loaded: Mapping[str, Any], params: Mapping[str, Any]) -> List[Tuple[str, str]]:
    """Contrastive tower encoders ``encoders_<m>`` -> classifier encoders ``encoder_<m>_0``."""
    return [(k, f"encoder_{k[len('encoders_'):]}_0") for k in sorted(loaded)
            if k.startswith("encoders_") and f"encoder_{k[len('encoders_'):]}_0" in params]


def _init_pairs(spec: Mapping[str, Any], loaded: Any, params: Any) -> List[Tuple[str, str]]:
    """(source, target) path pairs: comma-separated lists in ``source``/``target``; with neither
    given, a contrastive checkpoint loaded into a classifier maps its towers automatically."""
    sources = [s.strip() for s in str(spec.get("source") or "").split(",") if s.strip()]
    targets = [s.strip() for s in str(spec.get("target") or "").split(",") if s.strip()]
    if not sources and not targets and isinstance(loaded, Mapping):
        towers = _tower_mapping(loaded, params)
        if towers and set(loaded) != set(params):
            return towers
    if not targets:
        targets = sources
    if not sources:
        sources = [""] * len(targets) if targets else [""]
        targets = targets or [""]
    if len(sources) != len(targets):
        raise CheckpointError(f"init_from: source lists {len(sources)} paths ({sources}) but target lists "
                              f"{len(targets)} ({targets}); give one target per source")
    return list(zip(sources, targets))


def _subtree(loaded: Any, path: str) -> Any:
    for p in [p for p in path.split("/") if p]:
        if not isinstance(loaded, Mapping) or p not in loaded:
            raise CheckpointError(f"init_from.source: no {p!r} in the loaded params (has {sorted(loaded)})")
        loaded = loaded[p]
    return loaded


def _init_contrastive(runner: Runner, state, model_dir: str, towers: Mapping[str, Any],
                      say: Optional[Callable[[str], None]]):
    """A contrastive model's towers (and their pair's logit scale / bias) from a CLIP / SigLIP directory."""
    from mmjax.encoders.hf.dual import contrastive_params

    loaded = contrastive_params(model_dir, towers)
    host = runner.host_state(state)
    params = host.params
    for key in sorted(loaded):
        params = _graft(params, [key], loaded[key], "params")
    if say is not None:
        say(f"initialised {', '.join(sorted(loaded))} from pretrained {model_dir}")
    return runner.place_restored(host.replace(params=params))


def apply_init_from(runner: Runner, state, spec: Mapping[str, Any], say: Optional[Callable[[str], None]] = None):
    """Copies params subtrees from a checkpoint, a given pytree or a pretrained encoder into ``state``.

    ``spec``: ``path`` (a workdir / checkpoint dir), ``params`` (a pytree) or
    ``pretrained`` (a name from ``mmjax.encoders.pretrained.pretrained_names()``,
    e.g. "minilm": its offline weights, and BatchNorm statistics where it has
    them; or the path of a Hugging Face model directory, for an encoder
    ``{name: "pretrained", path: DIR}``: CLIP / SigLIP directories hold two
    towers, picked by ``source`` "vision" or "text"; for a contrastive model, given
    without source and target, its towers ``{encoder: "pretrained", path: DIR}``
    and their pair's logit scale / bias: see ``mmjax.encoders.hf.dual``); ``source`` (path inside
    the loaded params, "" = all) and ``target``
    (path in the model's params, default = source), both "a/b/c", or
    comma-separated lists of as many paths each. For a classifier the encoder
    of modality ``m`` lives at ``encoder_<m>_0``; a contrastive checkpoint's
    tower ``encoders_<m>`` goes there by default when neither path is given.
    ``say`` (optional) is told which subtrees were copied from where.
    """
    loaded_stats = None
    if spec.get("pretrained"):
        from mmjax.encoders.pretrained import pretrained_variables

        towers = getattr(runner.model, "towers", None)
        if towers is not None and not spec.get("target") and not spec.get("source"):
            return _init_contrastive(runner, state, str(spec["pretrained"]), towers, say)
        if not spec.get("target"):
            raise CheckpointError("init_from.pretrained needs init_from.target (e.g. 'encoder_text_0')")
        variables = pretrained_variables(str(spec["pretrained"]))
        loaded, loaded_stats = variables["params"], variables.get("batch_stats")
        if set(loaded) == {"vision", "text"} and not spec.get("source"):
            raise CheckpointError(f"init_from.pretrained {spec['pretrained']!r} holds two towers: set "
                                  "init_from.source to 'vision' or 'text' (or 'vision,text' with two targets)")
    else:
        loaded = spec.get("params")
        if loaded is None:
            loaded = load_params(spec["path"], spec.get("step"), say=say)
    host = runner.host_state(state)
    params = host.params
    pairs = _init_pairs(spec, loaded, params)
    for source, target in pairs:
        params = _graft(params, [p for p in target.split("/") if p], _subtree(loaded, source), "params")
    host = host.replace(params=params)
    if loaded_stats:
        if not host.batch_stats:
            raise CheckpointError(f"init_from.pretrained {spec['pretrained']!r} has BatchNorm statistics but "
                                  "the model has no batch_stats")
        stats = host.batch_stats
        for source, target in pairs:
            stats = _graft(stats, [p for p in target.split("/") if p], _subtree(loaded_stats, source),
                           "batch_stats")
        host = host.replace(batch_stats=stats)
    if say is not None:
        origin = spec.get("path") or (spec.get("pretrained") and f"pretrained {spec['pretrained']}") or "a pytree"
        what = ", ".join(f"{t or 'all params'} <- {s or '(root)'}" if s != t else (t or "all params")
                         for s, t in pairs)
        say(f"initialised {what} from {origin}")
    return runner.place_restored(host)
