"""Sharded conversion: a converted tower's weights placed shard by shard onto a mesh.

The target sharding of every weight comes from its logical axis names (the
same names as the native encoders', mapped by ``mmjax.sharding.LOGICAL_RULES``
or the rules given). Each array is built with ``jax.make_array_from_callback``:
the callback hands each addressable device only its slice of the converted
numpy array (cast to ``param_dtype`` per slice), so no device ever holds a full
copy of a sharded weight, and in a run of several processes each process
transfers only its own devices' shards. The host holds the checkpoint's tensors
and their converted form once (a converted array is dropped once placed), not
one copy per device. A dim that its mesh axes do not divide is replicated
(:func:`divisible`).

>>> mesh = make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
>>> variables = sharded_variables("/models/vit-huge", mesh=mesh)      # {"params": jax.Array leaves}
>>> out = jax.jit(build_module(read_config("/models/vit-huge")).apply)(variables, pixels)
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding

from mmjax.encoders import hf
from mmjax.encoders.hf.weights import HFCheckpointError, read_config, read_state_dict
from mmjax.sharding import LOGICAL_RULES


def example_input(module: nn.Module) -> Tuple[jax.ShapeDtypeStruct, ...]:
    """The abstract inputs ``module.init`` needs, batch 1, from the module's own sizes."""
    a = module
    if hasattr(a, "vocab_size"):  # text towers: (ids (1, 2), mask (1, 2))
        return jax.ShapeDtypeStruct((1, 2), jnp.int32), jax.ShapeDtypeStruct((1, 2), jnp.bool_)
    if hasattr(a, "num_frames"):  # VideoMAE: clips (1, F, H, W, C)
        return (jax.ShapeDtypeStruct((1, a.num_frames, a.image_size, a.image_size, a.num_channels), jnp.float32),)
    if hasattr(a, "image_size"):  # ViT, CLIP, SigLIP vision: (1, H, W, C)
        return (jax.ShapeDtypeStruct((1, a.image_size, a.image_size, a.num_channels), jnp.float32),)
    if hasattr(a, "max_source_positions"):  # Whisper: log-mel (1, 2 x positions, n_mels)
        return (jax.ShapeDtypeStruct((1, 2 * a.max_source_positions, a.num_mel_bins), jnp.float32),)
    if hasattr(a, "max_length"):  # AST: filterbank (1, max_length, n_mels)
        return (jax.ShapeDtypeStruct((1, a.max_length, a.num_mel_bins), jnp.float32),)
    raise HFCheckpointError(f"sharded conversion: no example input known for {type(module).__name__}")


def param_shardings(module: nn.Module, mesh: Mesh, rules: Optional[Sequence] = None) -> Any:
    """The NamedSharding of every param of ``module``: its logical names through ``rules``."""
    boxed = jax.eval_shape(lambda *xs: module.init(jax.random.key(0), *xs), *example_input(module))["params"]
    specs = nn.logical_to_mesh(nn.get_partition_spec(boxed), tuple(rules or LOGICAL_RULES))
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                        is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))


def divisible(sharding: NamedSharding, shape: Tuple[int, ...]) -> NamedSharding:
    """``sharding`` with every dim that its mesh axes do not divide evenly replicated instead
    (e.g. BERT's vocabulary of 30522 over a tensor axis of 4): the training state's own rule
    (``mmjax.train.state``), so these shardings are those a sharded run creates."""
    from mmjax.train.state import _fit_spec

    return NamedSharding(sharding.mesh, _fit_spec(sharding.spec, tuple(shape), sharding.mesh))


def place(params: Dict[str, Any], shardings: Any, dtype: Any = None) -> Dict[str, Any]:
    """Numpy params -> jax.Arrays on ``shardings`` (same tree), each device given only its slice.

    ``params`` is emptied leaf by leaf as the arrays are placed (the host copy goes as it is used).
    """
    paths, treedef = jax.tree_util.tree_flatten_with_path(shardings)
    flat_params = dict(jax.tree_util.tree_flatten_with_path(params)[0])
    if set(flat_params) != {p for p, _ in paths}:
        missing = sorted(jax.tree_util.keystr(p) for p in {p for p, _ in paths} - set(flat_params))
        extra = sorted(jax.tree_util.keystr(p) for p in set(flat_params) - {p for p, _ in paths})
        raise HFCheckpointError(f"sharded conversion: params do not match the module (missing {missing[:3]}, "
                                f"unexpected {extra[:3]})")
    out = []
    for path, sharding in paths:
        host = np.asarray(flat_params.pop(path))
        sharding = divisible(sharding, host.shape)
        want = np.dtype(dtype or host.dtype)
        out.append(jax.make_array_from_callback(host.shape, sharding,
                                                lambda idx, h=host: np.asarray(h[idx], want)))
        del host
    params.clear()
    return jax.tree_util.tree_unflatten(treedef, out)


def sharded_variables(model_dir: str, tower: Optional[str] = None, *, mesh: Mesh, rules: Optional[Sequence] = None,
                      pooler: Optional[bool] = None, param_dtype: Any = None,
                      **options: Any) -> Dict[str, Any]:
    """``{"params": ...}`` of a model directory's ``tower``, placed shard by shard onto ``mesh``.

    The tree equals :func:`hf.pretrained_variables`'s (same values) but every leaf is a global
    ``jax.Array`` with the sharding its logical names map to under ``rules`` (default
    ``LOGICAL_RULES``). ``options`` are module options (as for :func:`hf.build_module`) that change
    the params' structure, e.g. ``pooler``-less modules; ``pooler`` as in :func:`hf.convert`.
    """
    cfg, state = read_config(model_dir), read_state_dict(model_dir)
    fam = hf.family(cfg)
    if fam in hf.POOLER_FAMILIES and pooler is None:
        pooler = hf.SINGLE[fam][0].has_pooler(state)
    if fam in hf.POOLER_FAMILIES:
        options["pooler"] = pooler
    module = hf.build_module(cfg, tower, **options)
    params = hf.convert(state, cfg, tower, pooler)
    del state
    return {"params": place(params, param_shardings(module, mesh, rules), param_dtype)}


__all__ = ["sharded_variables", "param_shardings", "place", "divisible", "example_input"]
