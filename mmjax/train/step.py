"""Pure train and eval steps: ``train_step(state, batch) -> (state, metrics)``.

The steps know nothing about devices. Data parallelism over ``jax.pmap`` is
obtained by passing ``grad_reduce=partial(lax.pmean, axis_name=...)`` (the
pmap runner also gives each replica its rows of the global batch's dropout
masks from outside, :mod:`mmjax.train.pmap_dropout`); under
sharded ``jax.jit`` the compiler inserts the reductions and ``grad_reduce``
stays the identity. The step calls ``grad_reduce`` on the gradients *and* on
the weight totals used as denominators, so replicas whose batches carry
different total example weight still give the exact global weighted mean.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import optax

from mmjax import errors
from mmjax import losses as losses_lib
from mmjax.train.state import TrainState

PyTree = Any
Metrics = Dict[str, jax.Array]


class StepConfigError(errors.ConfigError):
    """Bad step option (loss name, accumulation steps, NaN policy)."""


def _identity(x):
    return x


def loss_terms(
    state: TrainState,
    params: PyTree,
    batch_stats: PyTree,
    batch: Mapping[str, Any],
    rng: jax.Array,
    *,
    loss: str,
    label_smoothing: float,
    class_weights: Optional[Tuple[float, ...]],
    train: bool,
) -> Tuple[jax.Array, Tuple[jax.Array, jax.Array, PyTree]]:
    """-> (sum of weighted losses, (sum of weights, logits, new batch_stats))."""
    variables = {"params": params}
    if batch_stats:
        variables["batch_stats"] = batch_stats
    kwargs: Dict[str, Any] = {"train": train, "rngs": {"dropout": rng}}
    if batch_stats and train:
        logits, updates = state.apply_fn(variables, batch, mutable=["batch_stats"], **kwargs)
        new_stats = updates["batch_stats"]
    else:
        logits = state.apply_fn(variables, batch, **kwargs)
        new_stats = batch_stats
    labels = batch["label"]
    weight = batch.get("weight")
    if loss == "softmax_xent":
        per_example = losses_lib.softmax_cross_entropy(logits, labels, label_smoothing=label_smoothing)
        if class_weights is not None:
            # Class weights join the example weights, so the mean is
            # sum(w_i c_{y_i} l_i) / sum(w_i c_{y_i}) (the usual weighted-mean convention).
            cw = jnp.asarray(class_weights, jnp.float32)
            if cw.shape != logits.shape[-1:]:
                raise StepConfigError(
                    f"loss.class_weights has {cw.shape[0]} entries but the model has {logits.shape[-1]} classes"
                )
            weight = cw[labels] if weight is None else weight.astype(jnp.float32) * cw[labels]
    elif loss == "sigmoid_bce":
        per_example = losses_lib.sigmoid_binary_cross_entropy(logits, labels)
    else:
        raise StepConfigError(f"loss.name must be one of {sorted(losses_lib.LOSSES)}, got {loss!r}")
    total, weight = losses_lib.weighted_sum(per_example, weight)
    return total, (weight, logits, new_stats)


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
    loss: str = "softmax_xent",
    label_smoothing: float = 0.0,
    class_weights: Optional[Tuple[float, ...]] = None,
    grad_accum_steps: int = 1,
    nan_policy: str = "skip",
    grad_reduce: Callable[[PyTree], PyTree] = _identity,
    task: Any = None,
) -> Tuple[TrainState, Metrics]:
    """One optimizer update on ``batch``.

    Args:
      state: the current TrainState.
      batch: the nested batch dict; ``label`` (B,) int (or (B, C) float for
        ``sigmoid_bce``), optional ``weight`` (B,) example weights.
      loss: "softmax_xent" | "sigmoid_bce".
      grad_accum_steps: split the batch into this many micro-batches and sum
        their gradients with ``lax.scan`` (same result as the full batch, less memory).
      nan_policy: "skip" leaves params, batch_stats and optimizer state
        unchanged when the loss or the gradient norm is not finite (the step
        counter still advances, as the data did); "stop" applies nothing
        either and reports ``finite=0`` so the loop can stop.
      grad_reduce: mean over data-parallel replicas (``lax.pmean`` under pmap).
      task: a :class:`mmjax.train.tasks.Task` whose ``loss_terms`` replaces the
        classification loss; its aux sums are reported divided by the weight.

    Returns:
      (new state, metrics): ``loss`` (weighted mean), ``grad_norm`` (before
      clipping), ``learning``-independent ``weight`` (sum of weights),
      ``finite`` (1.0/0.0) and ``accuracy`` for single-label losses.
    """
    if nan_policy not in ("skip", "stop"):
        raise StepConfigError(f"train.nan_policy must be 'skip' or 'stop', got {nan_policy!r}")
    step_rng = jax.random.fold_in(state.rng, state.step)
    terms = functools.partial(
        loss_terms, state, loss=loss, label_smoothing=label_smoothing,
        class_weights=class_weights, train=True,
    )
    if task is not None:
        terms = functools.partial(task.loss_terms, state, train=True)
    grad_fn = jax.value_and_grad(terms, has_aux=True)

    def correct(logits, mb):
        if task is not None:
            return logits  # the task's aux sums
        if loss != "softmax_xent":
            return jnp.zeros((), jnp.float32)
        return jnp.sum((jnp.argmax(logits, -1) == mb["label"]).astype(jnp.float32))

    if grad_accum_steps <= 1:
        (total, (weight, logits, new_stats)), grads = grad_fn(state.params, state.batch_stats, batch, step_rng)
        n_correct = correct(logits, batch)
    else:
        micro = _split_micro(batch, grad_accum_steps)

        def body(carry, xs):
            grads_acc, total_acc, weight_acc, correct_acc, stats = carry
            j, mb = xs
            (t, (w, logits, stats)), g = grad_fn(state.params, stats, mb, jax.random.fold_in(step_rng, j))
            grads_acc = jax.tree.map(jnp.add, grads_acc, g)
            correct_acc = jax.tree.map(jnp.add, correct_acc, correct(logits, mb))
            return (grads_acc, total_acc + t, weight_acc + w, correct_acc, stats), None

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        first = jax.tree.map(lambda x: x[0], micro)
        aux_shape = jax.eval_shape(lambda: correct(grad_fn(state.params, state.batch_stats, first, step_rng)[0][1][1],
                                                   first))
        init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32),
                jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), aux_shape), state.batch_stats)
        (grads, total, weight, n_correct, new_stats), _ = jax.lax.scan(
            body, init, (jnp.arange(grad_accum_steps), micro)
        )

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
    if task is not None:
        metrics.update({k: grad_reduce(v) / denom for k, v in n_correct.items()})
    elif loss == "softmax_xent":
        count = jnp.asarray(jax.tree.leaves(batch["label"])[0].shape[0], jnp.float32)
        metrics["accuracy"] = grad_reduce(n_correct) / grad_reduce(count)
    return new_state, metrics


def eval_step(
    state: TrainState,
    batch: Mapping[str, Any],
    *,
    num_classes: int,
    loss: str = "softmax_xent",
    label_smoothing: float = 0.0,
    class_weights: Optional[Tuple[float, ...]] = None,
) -> Metrics:
    """Sums over ``batch`` that the loop adds up across batches (and devices).

    Returns:
      ``loss_sum``, ``weight_sum`` and, for single-label losses, a weighted
      ``confusion`` (C, C) matrix (rows = true class) from which accuracy,
      macro-F1 and per-class P/R/F1 are derived on the host. Examples with
      ``weight`` 0 (padding of a last partial batch) count for nothing.
    """
    total, (weight, logits, _) = loss_terms(
        state, state.params, state.batch_stats, batch, jax.random.PRNGKey(0),
        loss=loss, label_smoothing=label_smoothing, class_weights=class_weights, train=False,
    )
    out = {"loss_sum": total, "weight_sum": weight}
    if loss == "softmax_xent":
        w = batch.get("weight")
        w = jnp.ones(logits.shape[:1], jnp.float32) if w is None else w.astype(jnp.float32)
        true = jax.nn.one_hot(batch["label"], num_classes, dtype=jnp.float32) * w[:, None]
        pred = jax.nn.one_hot(jnp.argmax(logits, -1), num_classes, dtype=jnp.float32)
        out["confusion"] = true.T @ pred
    return out
