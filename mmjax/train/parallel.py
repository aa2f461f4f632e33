"""Parallelism wrappers around the pure steps: ``single``, ``pmap`` and ``sharded``.

The step functions of :mod:`mmjax.train.step` are never rewritten; a
:class:`Runner` compiles them for one of three modes (``config.parallel.mode``):

* ``single``: ``jax.jit`` with the state donated; one device of one process
  (refused in a run of several processes: see :func:`check_processes`).
* ``pmap``: data parallel with ``jax.pmap`` over the local devices; the step
  receives ``grad_reduce=partial(lax.pmean, axis_name="batch")``, and each
  replica applies its rows of the global batch's dropout masks
  (:mod:`mmjax.train.pmap_dropout`), so pmap, single and sharded agree. Note that
  ``jax.pmap`` is in maintenance mode in recent JAX (it is implemented on
  ``jit`` + ``shard_map``); prefer ``sharded`` for new work.
* ``sharded``: ``jax.jit`` with ``in_shardings``/``out_shardings`` and
  donation over a ``Mesh`` with axes ("data", "fsdp", "tensor") of the shape
  ``config.parallel.mesh`` ({data: -1, fsdp: 1, tensor: 1}; -1 takes the
  remaining devices). Parameters follow their logical axis names through
  ``mmjax.sharding.LOGICAL_RULES`` (or ``config.parallel.rules``); the batch
  is split over ("data", "fsdp"). The state is created already sharded.

Batches arrive with uint8 images (``input_norm`` names their mean and std):
:meth:`Runner.put_batch` moves the uint8 bytes and normalises them on device,
so the steps see float32 images in every mode.

The mesh is laid out from the topology (``config.parallel.dcn_mesh`` for
several slices; see :mod:`mmjax.train.mesh`).

Multi-host: every process calls the same code with its own share of the global
batch (rows ``process_index`` of ``process_count`` equal parts); the sharded
runner assembles global arrays with ``jax.make_array_from_process_local_data``,
and moves the rows on device when the mesh wants them elsewhere (a ``tensor``
axis across processes: see :func:`mmjax.data.global_batch.to_global`).
"""
from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mmjax.data.global_batch import prefetch_to_device, to_global  # noqa: F401 (prefetch_to_device re-exported)
from mmjax.data.normalize import normalize_images
from mmjax.sharding import MESH_AXES, BatchShards
from mmjax.train import predict as predict_lib
from mmjax.train import step as step_lib
from mmjax.train.mesh import ParallelConfigError, check_processes, device_grid, mesh_shape, parse_rules  # noqa: F401
from mmjax.train.pmap_dropout import global_batch_masks
from mmjax.train.state import TrainState, abstract_train_state, create_train_state

PyTree = Any
MODES = ("single", "pmap", "sharded")
PMAP_AXIS = "batch"
BATCH_AXES = ("data", "fsdp")  # the mesh axes a batch's rows are split over


def make_mesh(mesh_cfg: Mapping[str, int], devices: Optional[Sequence[Any]] = None,
              dcn_cfg: Optional[Mapping[str, int]] = None) -> Mesh:
    """A Mesh over ``devices`` (default: all, every process) with axes ("data", "fsdp", "tensor"),
    laid out from the topology (``dcn_cfg``: slices per axis, see :mod:`mmjax.train.mesh`)."""
    devices = list(jax.devices() if devices is None else devices)
    return Mesh(device_grid(mesh_cfg, devices, dcn_cfg), MESH_AXES)


class Runner:
    """Creates the state and runs compiled steps for one parallel mode.

    Args:
      mode: "single" | "pmap" | "sharded".
      model: the linen model; make_tx: abstract params -> optax transformation.
      task: the model family (:class:`mmjax.train.tasks.Task`, or an object with its ``loss_terms``
        and ``eval_sums``) whose loss the steps compute; needed before the first step.
      step_kwargs: other keyword options of ``train_step`` (grad_accum_steps, nan_policy).
      mesh_cfg / rules: the ``sharded`` mesh and logical rules; dcn_cfg: how many slices each mesh
        axis spans (``config.parallel.dcn_mesh``, default one slice).
      input_norm: image modality -> (mean, std) per channel, for batches that carry uint8 images
        (``DatasetInfo.image_norms``); None when no image needs it.
    """

    def __init__(
        self,
        mode: str,
        model: nn.Module,
        make_tx: Callable[[PyTree], Any],
        *,
        task: Any = None,
        step_kwargs: Optional[Dict[str, Any]] = None,
        mesh_cfg: Optional[Mapping[str, int]] = None,
        rules: Optional[Sequence[Sequence[Any]]] = None,
        devices: Optional[Sequence[Any]] = None,
        input_norm: Optional[Mapping[str, Any]] = None,
        dcn_cfg: Optional[Mapping[str, int]] = None,
    ):
        if mode not in MODES:
            raise ParallelConfigError(f"parallel.mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.model = model
        self._tx = None

        def cached_tx(params):
            # One transformation per runner: the state's static fields must compare equal
            # between a created and a restored state (jit caches and in_shardings key on them).
            if self._tx is None:
                self._tx = make_tx(params)
            return self._tx
        self.make_tx = cached_tx
        self.task = task
        self.step_kwargs = dict(step_kwargs or {}, task=task)
        self.rules = parse_rules(rules)
        self.mesh: Optional[Mesh] = None
        self.state_shardings: Optional[TrainState] = None
        self.batch_sharding: Optional[NamedSharding] = None
        if mode == "sharded":
            self.mesh = make_mesh(mesh_cfg or {"data": -1}, devices, dcn_cfg)
            self.batch_sharding = NamedSharding(self.mesh, P(BATCH_AXES))
        self.local_devices = jax.local_devices() if devices is None else [
            d for d in devices if d.process_index == jax.process_index()
        ]
        # pmap spans every process's devices unless devices were given explicitly.
        self._pmap_devices = None if devices is None else list(devices)
        self._train = None
        self._eval = None
        self._predict = None
        self.input_norm = dict(input_norm or {})
        self._normalize = jax.jit(functools.partial(normalize_images, norms=self.input_norm, xp=jax.numpy))

    # ------------------------------------------------------------------ context
    def context(self):
        """Mesh + logical rules in scope while tracing (for modules that constrain activations)."""
        stack = contextlib.ExitStack()
        stack.enter_context(nn.logical_axis_rules(self.rules))
        if self.mesh is not None:
            stack.enter_context(jax.set_mesh(self.mesh))
        return stack

    # ------------------------------------------------------------------ state
    def create_state(self, example_batch: Mapping[str, Any], rng: jax.Array) -> TrainState:
        """The initial state, placed for this mode (sharded at creation for ``sharded``)."""
        example_batch = normalize_images(example_batch, self.input_norm)
        with self.context():
            state, shardings = create_train_state(
                self.model, self.make_tx, example_batch, rng, mesh=self.mesh, rules=self.rules
            )
        self.state_shardings = shardings
        if self.mode == "pmap":
            state = self.replicate(state)
        return state

    def abstract_state(self, example_batch: Mapping[str, Any], rng: jax.Array) -> TrainState:
        """ShapeDtypeStructs carrying the target shardings, to restore a checkpoint into."""
        example_batch = normalize_images(example_batch, self.input_norm)
        with self.context():
            abstract, shardings = abstract_train_state(self.model, self.make_tx, example_batch, rng,
                                                       mesh=self.mesh, rules=self.rules)
        if shardings is not None:
            self.state_shardings = shardings
        else:
            single = jax.sharding.SingleDeviceSharding(self.local_devices[0])
            shardings = jax.tree.map(lambda _: single, abstract)
        return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), abstract, shardings)

    def replicate(self, state: TrainState) -> TrainState:
        """One copy per local device along a new leading axis (pmap layout)."""
        n = len(self.local_devices)
        return jax.pmap(lambda x: x, devices=self._pmap_devices)(
            jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (n,) + np.shape(x)), state)
        )

    def place_restored(self, state: TrainState) -> TrainState:
        """A state restored from a checkpoint -> this mode's layout."""
        if self.mode == "pmap":
            return self.replicate(state)
        return state

    def host_state(self, state: TrainState) -> TrainState:
        """The state as checkpointed: one logical copy (pmap: device 0's replica)."""
        if self.mode == "pmap":
            return jax.tree.map(lambda x: x[0], state)
        return state

    def step_of(self, state: TrainState) -> int:
        s = state.step[0] if self.mode == "pmap" else state.step
        return int(jax.device_get(s))

    # ------------------------------------------------------------------ batches
    def put_batch(self, batch: Mapping[str, Any]) -> PyTree:
        """This process's numpy rows -> the step's input layout (uint8 images normalised on device).

        The transfer is asynchronous: calling this a few batches ahead of the step overlaps
        the copy with compute (see :func:`mmjax.data.global_batch.prefetch_to_device`)."""
        batch = dict(batch)
        needs_norm = any(np.asarray(batch["inputs"][m]).dtype == np.uint8 for m in self.input_norm
                         if m in batch.get("inputs", {}))
        if self.mode == "single":
            placed = jax.device_put(batch, self.local_devices[0])
            return self._normalize(placed) if needs_norm else placed
        if self.mode == "pmap":
            batch = normalize_images(batch, self.input_norm)  # pmap splits host arrays itself
            n = len(self.local_devices)

            def split(x):
                x = np.asarray(x)
                if x.shape[0] % n:
                    raise ParallelConfigError(
                        f"pmap: the per-process batch {x.shape[0]} is not divisible by {n} local devices"
                    )
                return x.reshape((n, x.shape[0] // n) + x.shape[1:])
            return jax.tree.map(split, batch)
        rows = int(np.shape(jax.tree.leaves(batch)[0])[0]) * jax.process_count()
        shards = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        if rows % shards:
            raise ParallelConfigError(f"sharded: the global batch of {rows} rows is not divisible by the {shards} "
                                      "(data x fsdp) shards of parallel.mesh")
        placed = to_global(batch, self.batch_sharding)
        if not needs_norm:
            return placed
        with self.context():
            return self._normalize(placed)

    # ------------------------------------------------------------------ steps
    def _compile(self):
        check_processes(self.mode, jax.process_count())
        if self.task is None:
            raise ParallelConfigError("Runner: no task was given, so there is no loss to compile a step for")
        train = functools.partial(step_lib.train_step, **self.step_kwargs)
        evaluate = functools.partial(step_lib.eval_step, task=self.task)
        if self.mode == "single":
            self._train = jax.jit(functools.partial(train, shards=BatchShards()), donate_argnums=0)
            self._eval = jax.jit(evaluate)
        elif self.mode == "pmap":
            reduce = functools.partial(jax.lax.pmean, axis_name=PMAP_AXIS)
            replicas = jax.device_count() if self._pmap_devices is None else len(self._pmap_devices)
            masks = global_batch_masks(replicas, PMAP_AXIS)

            def replica_step(state, batch):
                # The step's maths unchanged; its dropout masks are the global batch's rows.
                with nn.intercept_methods(masks):
                    return train(state, batch, grad_reduce=reduce, shards=BatchShards((PMAP_AXIS,)))
            self._train = jax.pmap(replica_step, axis_name=PMAP_AXIS, donate_argnums=0, devices=self._pmap_devices)
            summed = lambda s, b: jax.lax.psum(evaluate(s, b), PMAP_AXIS)  # noqa: E731
            self._eval = jax.pmap(summed, axis_name=PMAP_AXIS, devices=self._pmap_devices)
        else:
            if self.state_shardings is None:
                raise RuntimeError("sharded runner: create_state or abstract_state must run before a step")
            replicated = NamedSharding(self.mesh, P())
            self._train = jax.jit(
                functools.partial(train, shards=BatchShards(BATCH_AXES, self.mesh)),
                in_shardings=(self.state_shardings, self.batch_sharding),
                out_shardings=(self.state_shardings, replicated),
                donate_argnums=0,
            )
            self._eval = jax.jit(evaluate, in_shardings=(self.state_shardings, self.batch_sharding),
                                 out_shardings=replicated)

    def train_step(self, state: TrainState, batch: PyTree) -> Tuple[TrainState, Dict[str, Any]]:
        """One update; ``batch`` comes from :meth:`put_batch`. Metrics stay on device."""
        if self._train is None:
            self._compile()
        with self.context():
            return self._train(state, batch)

    def compile_train_step(self, state: TrainState, batch: PyTree):
        """Ahead-of-time compiles this runner's train step (its jit / pmap / sharded wrapper) for
        ``state`` and a :meth:`put_batch` batch -> a ``jax.stages.Compiled``: call it like
        :meth:`train_step` (donates ``state``); ``cost_analysis()`` / ``memory_analysis()`` give
        XLA's FLOPs and buffer sizes, as the benchmarks use."""
        if self._train is None:
            self._compile()
        with self.context():
            return self._train.lower(state, batch).compile()

    def eval_step(self, state: TrainState, batch: PyTree) -> Dict[str, Any]:
        if self._eval is None:
            self._compile()
        with self.context():
            return self._eval(state, batch)

    def predict(self, state: TrainState, batch: Mapping[str, Any]) -> PyTree:
        """Eval-mode outputs (logits (B, C)) of this process's numpy rows on ``state`` as placed -> numpy,
        the same rows in order (:mod:`mmjax.train.predict`; its ``gather_rows`` joins the processes')."""
        self._predict = self._predict or predict_lib.compile_outputs(self)
        with self.context():
            out = self._predict(state, self.put_batch(batch))
        return predict_lib.process_rows(self, out)

    def train_metrics(self, metrics: Dict[str, Any]) -> Dict[str, float]:
        """Device metrics -> python floats (pmap: replicas agree after pmean; take the first)."""
        m = jax.device_get(metrics)
        if self.mode == "pmap":
            m = jax.tree.map(lambda x: x[0], m)
        return {k: float(v) for k, v in m.items()}

    def eval_sums(self, sums: Dict[str, Any]) -> Dict[str, np.ndarray]:
        """Device eval sums -> numpy (pmap: already psum-med over devices; take the first)."""
        m = jax.device_get(sums)
        if self.mode == "pmap":
            m = jax.tree.map(lambda x: np.asarray(x)[0], m)
        return {k: np.asarray(v, np.float64) for k, v in m.items()}

