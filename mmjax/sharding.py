"""Logical axis names for weights and activations, and their default mesh rules.

Weights are annotated with logical names (``nn.with_logical_partitioning``);
``LOGICAL_RULES`` maps each logical name to a mesh axis ("data", "fsdp",
"tensor") or None (replicated). The same model then runs replicated, FSDP or
tensor-parallel by changing the rules or the mesh shape alone.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional, Sequence, Tuple

import flax.linen as nn
import jax

# Logical names used across mmjax.
BATCH = "batch"
EMBED = "embed"          # model width of encoders / transformer blocks
MLP = "mlp"              # hidden width of feed-forward layers
HEADS = "heads"          # attention heads (q/k/v output, o input)
KV = "kv"                # per-head dim
VOCAB = "vocab"
FUSION_IN = "fusion_in"  # input side of fusion projections
FUSION_OUT = "fusion_out"  # output side of fusion projections
RANK = "rank"            # low-rank factors / bilinear factor dim
CONV_IN = "conv_in"
CONV_OUT = "conv_out"
CLASSES = "classes"
NORM = "norm"            # scale / bias of norms: always replicated
LENGTH = "length"

MESH_AXES = ("data", "fsdp", "tensor")

# Default: FSDP shards the large input dims, tensor parallel shards the wide
# output dims (Megatron-style column/row split for MLP and attention).
LOGICAL_RULES: Tuple[Tuple[str, object], ...] = (
    (BATCH, ("data", "fsdp")),
    (EMBED, "fsdp"),
    (FUSION_IN, "fsdp"),
    (CONV_IN, "fsdp"),
    (MLP, "tensor"),
    (HEADS, "tensor"),
    (FUSION_OUT, "tensor"),
    (RANK, None),
    (VOCAB, "tensor"),
    (CONV_OUT, "tensor"),
    (KV, None),
    (CLASSES, None),
    (NORM, None),
    (LENGTH, None),
)


def logical(init: Callable, axes: Sequence[str]) -> Callable:
    """Wraps an initializer so the created weight carries logical axis names."""
    return nn.with_logical_partitioning(init, tuple(axes))


LAYERS = "layers"  # the stacked-layer axis that nn.scan adds
LOGICAL_RULES = LOGICAL_RULES + ((LAYERS, None),)


def reshard_for(mesh: Any, spec: Any, *xs: Any) -> Tuple[Any, ...]:
    """Arrays about to enter ``jax.shard_map(in_specs=spec)`` on ``mesh``. Explicit-axis meshes
    (``jax.make_mesh``'s default) type arrays with their sharding and shard_map insists the types
    match ``in_specs``, so they are resharded first; auto-axis meshes let shard_map reshard."""
    if any(t == jax.sharding.AxisType.Explicit for t in getattr(mesh, "axis_types", ())):
        return tuple(jax.reshard(x, jax.sharding.NamedSharding(mesh, spec)) for x in xs)
    return xs


@dataclasses.dataclass(frozen=True)
class BatchShards:
    """Where the rows of the global batch live while a step runs, for the few operations that need
    all of them at once (contrastive negatives). The parallel runner passes one to the step, as it
    passes ``grad_reduce``; the operation is written once, per shard (:meth:`map`), and gives the
    same result in every mode.

    * ``axes=()``: every row is here (``single``);
    * ``axes=("batch",)``, no mesh: the step already runs per shard (``pmap``);
    * ``axes=("data", "fsdp")`` with ``mesh``: the step sees global arrays (``sharded`` jit);
      :meth:`map` enters the per-shard view with ``jax.shard_map``.
    """

    axes: Tuple[str, ...] = ()
    mesh: Optional[Any] = None

    def map(self, per_shard: Callable[..., Any], rows: Sequence[Any], replicated: Sequence[Any] = ()) -> Any:
        """``per_shard(axes, *local_rows, *replicated)`` -> a value equal on every shard (a scalar loss).

        ``rows``: (B, ...) arrays split over the batch; ``replicated``: arrays every shard sees whole
        (learned scalars). ``per_shard`` gathers and reduces over ``axes`` itself (nothing when empty)."""
        body = functools.partial(per_shard, self.axes)
        if self.mesh is None:
            return body(*rows, *replicated)
        from jax.sharding import PartitionSpec as P

        spec = P(self.axes)
        rows = reshard_for(self.mesh, spec, *rows)
        return jax.shard_map(body, mesh=self.mesh, in_specs=(spec,) * len(rows) + (P(),) * len(replicated),
                             out_specs=P())(*rows, *replicated)
