"""The items of a checkpoint step and the Orbax handlers that write and read them.

A step ``DIR/<step>/`` holds ``state`` (the TrainState as a state dict,
``StandardCheckpointHandler``), ``meta`` and ``checksums`` (JSON,
``JsonCheckpointHandler``) and, once ranked, Orbax's own ``metrics`` item.
Each CheckpointManager gets a registry of its own (Orbax adds its metrics
handler to the one it is given).

The checksums handler is also the test hook ``MMJAX_FAULT=before_commit@N``
(:func:`mmjax.train.faults.fault`): Orbax finalises each item once every item
of the step is written, then commits the step (the rename of
``N.orbax-checkpoint-tmp`` to ``N``, or its commit file on an object store).
Checksums is the last of our items to be finalised, so a test that kills the
process inside the fault finds step N written whole and not committed.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Optional

import orbax.checkpoint as ocp

from mmjax.train import checksum, faults

STATE = "state"
META = "meta"


def step_of(item_dir: Any) -> Optional[int]:
    """The step of an item directory (``.../4.orbax-checkpoint-tmp/checksums...`` -> 4); None if not a step."""
    name = os.path.basename(os.path.dirname(os.fspath(item_dir).rstrip("/"))).split(".")[0]
    return int(name) if name.isdigit() else None


class ChecksumsHandler(ocp.handlers.JsonCheckpointHandler):
    """The JSON handler of the checksums item; its :meth:`finalize` is the ``before_commit`` fault point."""

    def finalize(self, directory) -> None:
        super().finalize(directory)
        faults.fault("before_commit", step_of(directory))

    @classmethod
    def typestr(cls) -> str:
        # The step metadata names Orbax's JSON handler, as for the other JSON items.
        return ocp.handlers.JsonCheckpointHandler.typestr()


def handler_registry() -> ocp.handlers.DefaultCheckpointHandlerRegistry:
    """A fresh registry of the state, meta and checksums handlers (finalised in this order)."""
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    items = ((STATE, ocp.handlers.StandardCheckpointHandler(), ocp.args.StandardSave, ocp.args.StandardRestore),
             (META, ocp.handlers.JsonCheckpointHandler(), ocp.args.JsonSave, ocp.args.JsonRestore),
             (checksum.ITEM, ChecksumsHandler(), ocp.args.JsonSave, ocp.args.JsonRestore))
    for item, handler, save, restore in items:
        registry.add(item, save, handler)
        registry.add(item, restore, handler)
    return registry


def save_args(tree: Any, meta: Mapping[str, Any], ranked: Optional[Mapping[str, float]]) -> ocp.args.Composite:
    """The items one save writes: the state dict ``tree``, its ``meta`` and their checksums."""
    return ocp.args.Composite(**{
        STATE: ocp.args.StandardSave(tree),
        META: ocp.args.JsonSave(dict(meta)),
        checksum.ITEM: ocp.args.JsonSave(checksum.record(tree, meta, ranked)),
    })


def state_args(target: Any) -> ocp.args.Composite:
    """Restores the state item into ``target`` (a state dict of ShapeDtypeStructs or host arrays)."""
    return ocp.args.Composite(**{STATE: ocp.args.StandardRestore(target)})


def meta_args() -> ocp.args.Composite:
    """Restores the meta item."""
    return ocp.args.Composite(**{META: ocp.args.JsonRestore()})
