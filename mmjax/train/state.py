"""``TrainState`` and its creation: plain (one device), replicated or sharded at birth.

Sharded creation follows the usual recipe: ``jax.eval_shape`` of the init to
learn shapes and logical axis names without allocating, then
``jax.jit(init, out_shardings=...)`` so every parameter is created directly in
its shards and never lives whole on one device.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import flax.struct as struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

PyTree = Any


class TrainState(struct.PyTreeNode):
    """Everything a train step reads and writes.

    Attributes:
      step: () int32, number of updates applied (= data pipeline position).
      params: the model's ``params`` collection (unboxed arrays).
      batch_stats: BatchNorm statistics, ``{}`` for models without BatchNorm.
      opt_state: optax state.
      rng: (2,) uint32 base key; step ``s`` uses ``fold_in(rng, s)`` so the
        randomness of a step does not depend on how training was split up.
      apply_fn / tx: the model's apply and the optax transformation (static).
    """

    step: jax.Array
    params: PyTree
    batch_stats: PyTree
    opt_state: PyTree
    rng: jax.Array
    apply_fn: Callable = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)

    @property
    def variables(self) -> Dict[str, PyTree]:
        v = {"params": self.params}
        if self.batch_stats:
            v["batch_stats"] = self.batch_stats
        return v


def example_inputs(batch: Mapping[str, Any]) -> Dict[str, Any]:
    """A one-example zero batch with the structure and dtypes of ``batch`` (for init)."""
    return jax.tree.map(lambda x: np.zeros((1,) + tuple(np.shape(x))[1:], np.asarray(x).dtype), dict(batch))


def unbox(tree: PyTree) -> PyTree:
    """Strips ``nn.Partitioned`` boxes without adding sharding constraints (out_shardings place the arrays)."""
    return jax.tree.map(
        lambda x: (x.unbox(apply_constraint=False) if isinstance(x, nn.Partitioned) else x.unbox())
        if isinstance(x, nn.meta.AxisMetadata) else x,
        tree,
        is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata),
    )


def _key_names(path) -> Tuple[str, ...]:
    out = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                out.append(str(getattr(k, attr)))
                break
    return tuple(out)


def _fit_spec(spec: P, shape: Tuple[int, ...], mesh: Mesh) -> P:
    """Drops mesh axes from dims they do not divide (those dims are replicated instead)."""
    if len(spec) > len(shape):
        return P()
    out = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        if axes is None:
            out.append(None)
            continue
        names = axes if isinstance(axes, tuple) else (axes,)
        size = int(np.prod([mesh.shape[a] for a in names]))
        out.append(axes if dim % size == 0 else None)
    return P(*out)


def state_shardings(abstract_state: TrainState, param_specs: PyTree, mesh: Mesh) -> TrainState:
    """NamedShardings for every leaf of ``abstract_state``.

    ``param_specs`` are mesh PartitionSpecs for ``params`` (from the logical
    names via the rules). Optimizer-state leaves that mirror a parameter (Adam's
    mu and nu, found by key-path suffix and shape) take that parameter's spec;
    everything else (step, rng, counts, batch_stats) is replicated.
    """
    by_path: Dict[Tuple[str, ...], Tuple[P, Tuple[int, ...]]] = {}
    flat_specs = jax.tree_util.tree_flatten_with_path(param_specs, is_leaf=lambda x: isinstance(x, P))[0]
    flat_params = {_key_names(p): x.shape for p, x in jax.tree_util.tree_flatten_with_path(abstract_state.params)[0]}
    for path, spec in flat_specs:
        names = _key_names(path)
        shape = flat_params.get(names)
        if shape is not None:
            by_path[names] = (spec, shape)

    def sharding_for(path, leaf):
        names = _key_names(path)
        shape = tuple(getattr(leaf, "shape", ()))
        for i in range(len(names)):
            hit = by_path.get(names[i:])
            if hit is not None and hit[1] == shape:
                return NamedSharding(mesh, _fit_spec(hit[0], shape, mesh))
        return NamedSharding(mesh, P())

    return jax.tree_util.tree_map_with_path(sharding_for, abstract_state)


def _init_fn(model: nn.Module, batch: Mapping[str, Any]) -> Callable[[jax.Array], PyTree]:
    def init(rng):
        params_rng, dropout_rng = jax.random.split(rng)
        dummy = jax.tree.map(jnp.asarray, batch)
        return model.init({"params": params_rng, "dropout": dropout_rng}, dummy, train=False)
    return init


def _state_init(model: nn.Module, make_tx: Callable[[PyTree], optax.GradientTransformation],
                batch: Mapping[str, Any], rng: jax.Array) -> Tuple[Callable[[jax.Array], TrainState], PyTree]:
    """(rng -> initial TrainState, the boxed abstract variables with their logical axis names)."""
    init = _init_fn(model, example_inputs(batch))
    boxed = jax.eval_shape(init, rng)
    tx = make_tx(unbox(boxed)["params"])

    def init_state(rng_):
        init_rng_, state_rng_ = jax.random.split(rng_)
        variables = unbox(init(init_rng_))
        params = variables["params"]
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=variables.get("batch_stats", {}),
            opt_state=tx.init(params),
            rng=state_rng_,
            apply_fn=model.apply,
            tx=tx,
        )
    return init_state, boxed


def _abstract(init_state, boxed: PyTree, rng: jax.Array, mesh: Optional[Mesh],
              rules: Sequence[Tuple[str, Any]]) -> Tuple[TrainState, Optional[TrainState]]:
    abstract = jax.eval_shape(init_state, rng)
    if mesh is None:
        return abstract, None
    mesh_specs = nn.logical_to_mesh(nn.get_partition_spec(boxed)["params"], rules)
    return abstract, state_shardings(abstract, mesh_specs, mesh)


def abstract_train_state(
    model: nn.Module,
    make_tx: Callable[[PyTree], optax.GradientTransformation],
    batch: Mapping[str, Any],
    rng: jax.Array,
    *,
    mesh: Optional[Mesh] = None,
    rules: Sequence[Tuple[str, Any]] = (),
) -> Tuple[TrainState, Optional[TrainState]]:
    """The state :func:`create_train_state` would make, as ShapeDtypeStructs (nothing allocated),
    and its NamedShardings over ``mesh`` (None without a mesh). Arguments as there."""
    init_state, boxed = _state_init(model, make_tx, batch, rng)
    return _abstract(init_state, boxed, rng, mesh, rules)


def create_train_state(
    model: nn.Module,
    make_tx: Callable[[PyTree], optax.GradientTransformation],
    batch: Mapping[str, Any],
    rng: jax.Array,
    *,
    mesh: Optional[Mesh] = None,
    rules: Sequence[Tuple[str, Any]] = (),
) -> Tuple[TrainState, Optional[TrainState]]:
    """Creates the initial state.

    Args:
      model: a linen Module called as ``model.apply(variables, batch, train=...)``.
      make_tx: abstract params -> optax transformation (masks need the tree structure).
      batch: an example batch (any batch size; only shapes/dtypes are used).
      rng: (2,) uint32 key; params and the state's dropout key are derived from it.
      mesh: create the state sharded over this mesh (``rules`` map logical
        names to its axes); None creates it with plain ``jax.jit`` (one device).

    Returns:
      (state, shardings): shardings is a TrainState of NamedShardings or None.
    """
    init_state, boxed = _state_init(model, make_tx, batch, rng)
    if mesh is None:
        return jax.jit(init_state)(rng), None
    _, shardings = _abstract(init_state, boxed, rng, mesh, rules)
    return jax.jit(init_state, out_shardings=shardings)(rng), shardings
