"""Pure train and eval steps: ``train_step(state, batch) -> (state, metrics)``.

The steps know nothing about devices. Data parallelism over ``jax.pmap`` is
obtained by passing ``grad_reduce=partial(lax.pmean, axis_name=...)`` (the
pmap runner also gives each replica its rows of the global batch's dropout
masks from outside, :mod:`mmjax.train.pmap_dropout`); under
sharded ``jax.jit`` the compiler inserts the reductions and ``grad_reduce``
stays the identity. The step calls ``grad_reduce`` on the gradients *and* on
the weight totals used as denominators, so replicas whose batches carry
different total example weight still give the exact global weighted mean.
Losses over the global batch (contrastive negatives) get ``shards``
(:class:`mmjax.sharding.BatchShards`), where the runner says how the rows are
split; the loss is written once, per shard, and is the same in every mode.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Dict, Mapping, Tuple

import jax
import jax.numpy as jnp
import optax

from mmjax import errors
from mmjax.sharding import BatchShards
from mmjax.train.defaults import NAN_POLICY  # train.nan_policy's default (also imported from here)
from mmjax.train.state import TrainState

PyTree = Any
Metrics = Dict[str, jax.Array]


NAN_POLICIES = ("skip", "stop")


class StepConfigError(errors.ConfigError):
    """Bad step option (accumulation steps, NaN policy)."""


def _identity(x):
    return x


def _split_micro(batch: PyTree, k: int) -> PyTree:
    """(B, ...) -> (k, B/k, ...), microbatch j = examples j, k+j, 2k+j, ...

    Strided (not contiguous) so that when B is sharded over devices each
    microbatch takes an equal share from every device and no data moves.
    """
    def split(x):
        b = x.shape[0]
        if b % k:
            raise StepConfigError(f"train.grad_accum_steps={k} does not divide the batch size {b}")
        return jnp.swapaxes(x.reshape((b // k, k) + x.shape[1:]), 0, 1)
    return jax.tree.map(split, batch)


def train_step(
    state: TrainState,
    batch: Mapping[str, Any],
    *,
    task: Any,
    grad_accum_steps: int = 1,
    nan_policy: str = NAN_POLICY,
    grad_reduce: Callable[[PyTree], PyTree] = _identity,
    shards: BatchShards = BatchShards(),
) -> Tuple[TrainState, Metrics]:
    """One optimizer update on ``batch``.

    Args:
      state: the current TrainState.
      batch: the nested batch dict; optional ``weight`` (B,) example weights.
      task: the model family's objective (a :class:`mmjax.train.tasks.Task`, or any object with
        its ``loss_terms``): ``(loss_sum, (weight_sum, aux, new_batch_stats))``, where ``aux`` maps a
        metric name to a ``(sum, count)`` pair.
      grad_accum_steps: split the batch into this many micro-batches and sum
        their gradients with ``lax.scan`` (same result as the full batch, less memory).
      nan_policy: "skip" leaves params, batch_stats and optimizer state
        unchanged when the loss or the gradient norm is not finite (the step
        counter still advances, as the data did); "stop" applies nothing
        either and reports ``finite=0`` so the loop can stop.
      grad_reduce: mean over data-parallel replicas (``lax.pmean`` under pmap).
      shards: where the batch's rows are, for losses over the global batch (the runner's).

    Returns:
      (new state, metrics): ``loss`` (weighted mean), ``grad_norm`` (before
      clipping), ``weight`` (sum of weights), ``finite`` (1.0/0.0) and each aux
      metric as ``sum / count`` over the global batch (``accuracy`` for the classifier).
    """
    if nan_policy not in NAN_POLICIES:
        raise StepConfigError(f"train.nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}")
    step_rng = jax.random.fold_in(state.rng, state.step)
    terms = functools.partial(task.loss_terms, state.apply_fn, train=True, shards=shards)
    grad_fn = jax.value_and_grad(terms, has_aux=True)

    if grad_accum_steps <= 1:
        (total, (weight, aux, new_stats)), grads = grad_fn(state.params, state.batch_stats, batch, step_rng)
    else:
        micro = _split_micro(batch, grad_accum_steps)

        def body(carry, xs):
            grads_acc, total_acc, weight_acc, aux_acc, stats = carry
            j, mb = xs
            (t, (w, aux, stats)), g = grad_fn(state.params, stats, mb, jax.random.fold_in(step_rng, j))
            grads_acc = jax.tree.map(jnp.add, grads_acc, g)
            return (grads_acc, total_acc + t, weight_acc + w, jax.tree.map(jnp.add, aux_acc, aux), stats), None

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        first = jax.tree.map(lambda x: x[0], micro)
        aux_shape = jax.eval_shape(lambda: grad_fn(state.params, state.batch_stats, first, step_rng)[0][1][1])
        init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32),
                jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), aux_shape), state.batch_stats)
        (grads, total, weight, aux, new_stats), _ = jax.lax.scan(body, init, (jnp.arange(grad_accum_steps), micro))

    # Global weighted mean: sum_d grad(S_d) / sum_d W_d, via means over replicas.
    denom = jnp.maximum(grad_reduce(weight), 1e-12)
    grads = grad_reduce(jax.tree.map(lambda g: g / denom, grads))
    mean_loss = grad_reduce(total) / denom
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(mean_loss) & jnp.isfinite(grad_norm)
    new_stats = grad_reduce(new_stats) if new_stats else new_stats

    updates, new_opt_state = state.tx.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
    new_state = state.replace(
        step=state.step + 1,
        params=keep(new_params, state.params),
        opt_state=keep(new_opt_state, state.opt_state),
        batch_stats=keep(new_stats, state.batch_stats),
    )
    metrics = {
        "loss": mean_loss,
        "grad_norm": grad_norm,
        "finite": finite.astype(jnp.float32),
        "weight": grad_reduce(weight),
    }
    metrics.update({k: grad_reduce(s) / jnp.maximum(grad_reduce(c), 1e-12) for k, (s, c) in aux.items()})
    return new_state, metrics


def eval_step(state: TrainState, batch: Mapping[str, Any], *, task: Any) -> Metrics:
    """Sums over ``batch`` that the evaluation adds up across batches (and devices): the task's
    ``eval_sums`` (for the classifier ``loss_sum``, ``weight_sum`` and a weighted confusion matrix)."""
    return task.eval_sums(state.apply_fn, state.params, state.batch_stats, batch)
