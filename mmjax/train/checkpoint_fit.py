"""Does a checkpoint fit the state a config builds? Paths and shapes compared, readable differences.

Used by :class:`mmjax.train.checkpoint.Checkpointer` before a restore: a readable
checkpoint of another model or optimizer is a :class:`CheckpointMismatchError` that
names what differs (:func:`mismatch`), never damage. The checkpoint errors live here,
re-exported by :mod:`mmjax.train.checkpoint`.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import jax

from mmjax import errors
from mmjax.train.run_record import differences, to_json

PyTree = Any


class CheckpointError(errors.CheckpointError):
    """Bad checkpoint option, or a checkpoint that does not fit the model."""


class CheckpointMismatchError(CheckpointError):
    """A readable checkpoint whose arrays do not fit the state this config builds.

    The workdir holds a run of another model or optimizer (a changed fusion,
    width or optimizer chain): the checkpoint is fine and is left where it is.
    """


def shapes(tree: PyTree) -> Dict[str, Tuple[int, ...]]:
    """{"a/b/c": shape} of every array leaf of a state dict or an orbax metadata tree."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): tuple(getattr(x, "shape", ()))
            for path, x in leaves}


def tree_differences(on_disk: Mapping[str, Tuple[int, ...]], wanted: Mapping[str, Tuple[int, ...]],
                     limit: int = 6) -> list:
    """Readable differences between two {path: shape} maps, params first, at most ``limit`` (then a count)."""
    lines = []
    for path in sorted(set(on_disk) | set(wanted), key=lambda p: (not p.startswith("params/"), p)):
        if path not in on_disk:
            lines.append(f"{path} {wanted[path]} is not in the checkpoint")
        elif path not in wanted:
            lines.append(f"{path} {on_disk[path]} is in the checkpoint but not in the model")
        elif tuple(on_disk[path]) != tuple(wanted[path]):
            lines.append(f"{path} has shape {tuple(on_disk[path])} in the checkpoint, {tuple(wanted[path])} in the model")
    if len(lines) > limit:
        lines = lines[:limit] + [f"and {len(lines) - limit} more"]
    return lines


def fitting_params(on_disk: Mapping[str, Tuple[int, ...]], wanted: Mapping[str, Tuple[int, ...]]) -> list:
    """Top-level params subtrees ("encoder_a_0", ...) whose arrays have the same paths and shapes in both maps."""
    def by_top(sizes):
        groups: Dict[str, Dict[str, Tuple[int, ...]]] = {}
        for path, shape in sizes.items():
            parts = path.split("/")
            if parts[0] == "params" and len(parts) > 2:
                groups.setdefault(parts[1], {})[path] = tuple(shape)
        return groups

    old, new = by_top(on_disk), by_top(wanted)
    return sorted(k for k in new if old.get(k) == new[k])


def config_differences(saved: Any, current: Any, limit: int = 6) -> list:
    """``key: saved -> current`` for each leaf that differs between two JSON config trees.

    model.* and optim.* keys first, at most ``limit`` lines (then a count).
    """
    out = differences(saved, current)
    # The model and the optimizer decide which arrays a state has: their keys first.
    out.sort(key=lambda line: (not line.startswith(("model.", "optim.")), line))
    return out[:limit] + ([f"and {len(out) - limit} more"] if len(out) > limit else [])


def mismatch(on_disk: Mapping[str, Tuple[int, ...]], wanted: Mapping[str, Tuple[int, ...]], *, directory: str,
             step: int, config: Optional[Mapping[str, Any]] = None,
             saved_config: Optional[Callable[[], Any]] = None) -> Optional[CheckpointMismatchError]:
    """The error for step ``step`` of ``directory`` when ``on_disk`` != ``wanted`` ({path: shape}); None if it fits.

    With ``config``, the message also names the config keys that differ from
    ``saved_config()`` (the config saved with the step; read only on a mismatch).
    """
    found = tree_differences(on_disk, wanted)
    if not found:
        return None
    fitting = fitting_params(on_disk, wanted)
    reuse = (f" (--config.init_from.path={os.path.dirname(directory)} "
             f"--config.init_from.source={','.join(fitting)} starts it from the parts of the old run that fit)"
             if fitting else "")
    hint = ""
    if config is not None and saved_config is not None:
        try:
            saved = saved_config() or {}
        except Exception:  # noqa: BLE001 - the hint is optional; the shapes already say what is wrong
            saved = {}
        changed = config_differences(saved, to_json(config))
        if changed:
            hint = f" The config differs from the one saved with it in: {'; '.join(changed)}."
    return CheckpointMismatchError(
        f"checkpoint {step} in {directory} was written by a different model or optimizer than this "
        f"config builds: {'; '.join(found)}.{hint} Use the config the checkpoint was written with, or "
        f"train this one in another --workdir{reuse}."
    )
