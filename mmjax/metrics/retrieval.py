"""Evaluation of embedding models: retrieval recall@K, zero-shot classification
and a linear probe on frozen embeddings.

Retrieval ties. Ranks are *pessimistic*: a query's rank is the number of
wrong keys whose score is >= the best correct key's score. A wrong key tied
with the correct one therefore counts against the query, so a collapsed
model (all scores equal) gets recall ~K/N, never a perfect score.

Linear probe. Multinomial logistic regression (softmax + L2 penalty
``l2 * ||W||^2 / 2``, bias unpenalised) on the frozen features, fitted full-batch
with optax's L-BFGS (zoom line search) for a fixed number of iterations inside
one ``jax.jit``: a convex problem, so the result does not depend on an init or
a learning rate.
"""
from __future__ import annotations

import functools
from typing import Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import optax

from mmjax import errors

Array = jax.Array


class RetrievalInputError(errors.InputError):
    """Bad input to a retrieval / probe function (shapes, ids)."""


def _check_2d(x: Array, name: str) -> None:
    if x.ndim != 2:
        raise RetrievalInputError(f"{name} must be (N, E), got shape {tuple(x.shape)}")


def retrieval_ranks(
    queries: Array,
    keys: Array,
    query_ids: Optional[Array] = None,
    key_ids: Optional[Array] = None,
) -> Array:
    """Pessimistic rank (0 = best) of the best correct key for each query.

    Args:
      queries: (Nq, E); keys: (Nk, E). Scores are dot products (cosine for unit
        embeddings).
      query_ids, key_ids: (Nq,), (Nk,) ints; key j is correct for query i when
        the ids match (e.g. five captions per image share the image id).
        Default: arange, i.e. query i matches key i only (needs Nq == Nk).

    Returns:
      (Nq,) int32: number of wrong keys scoring >= the best correct key.
    """
    _check_2d(queries, "queries")
    _check_2d(keys, "keys")
    if queries.shape[1] != keys.shape[1]:
        raise RetrievalInputError(
            f"queries and keys differ in width: {queries.shape[1]} vs {keys.shape[1]}"
        )
    if query_ids is None or key_ids is None:
        if queries.shape[0] != keys.shape[0]:
            raise RetrievalInputError(
                f"without ids, queries and keys must pair up one to one; got {queries.shape[0]} "
                f"queries and {keys.shape[0]} keys"
            )
        query_ids = jnp.arange(queries.shape[0])
        key_ids = jnp.arange(keys.shape[0])
    scores = queries.astype(jnp.float32) @ keys.astype(jnp.float32).T
    correct = query_ids[:, None] == key_ids[None, :]
    best = jnp.max(jnp.where(correct, scores, -jnp.inf), axis=1, keepdims=True)
    return jnp.sum(~correct & (scores >= best), axis=1).astype(jnp.int32)


def recall_at_k(
    queries: Array,
    keys: Array,
    ks: Sequence[int] = (1, 5, 10),
    query_ids: Optional[Array] = None,
    key_ids: Optional[Array] = None,
) -> Dict[int, Array]:
    """{k: fraction of queries whose best correct key ranks < k} (pessimistic ties)."""
    ranks = retrieval_ranks(queries, keys, query_ids, key_ids)
    return {k: jnp.mean(ranks < k) for k in ks}


def retrieval_metrics(
    a: Array,
    b: Array,
    names: Tuple[str, str] = ("image", "text"),
    ks: Sequence[int] = (1, 5, 10),
    a_ids: Optional[Array] = None,
    b_ids: Optional[Array] = None,
) -> Dict[str, Array]:
    """Recall@K both ways: {"image_to_text/R@1": ..., "text_to_image/R@1": ..., ...}."""
    out = {}
    for (q, k, qi, ki), (qn, kn) in (
        ((a, b, a_ids, b_ids), names),
        ((b, a, b_ids, a_ids), names[::-1]),
    ):
        for kk, r in recall_at_k(q, k, ks, qi, ki).items():
            out[f"{qn}_to_{kn}/R@{kk}"] = r
    return out


# --- zero-shot -----------------------------------------------------------------


def zero_shot_classifier(class_embeddings: Array) -> Array:
    """Class prompt embeddings -> (C, E) unit class vectors.

    class_embeddings: (C, E), or (C, P, E) for P prompts per class
    ("a photo of a {}", ...): the prompts are averaged, then re-normalised
    (CLIP's prompt ensembling).
    """
    x = class_embeddings.astype(jnp.float32)
    if x.ndim == 3:
        x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-6)
        x = x.mean(axis=1)
    elif x.ndim != 2:
        raise RetrievalInputError(
            f"class_embeddings must be (C, E) or (C, P, E), got shape {tuple(x.shape)}"
        )
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


def zero_shot_predict(embeddings: Array, class_embeddings: Array) -> Array:
    """(N, E) embeddings and (C, E) or (C, P, E) class prompts -> (N,) predicted class."""
    _check_2d(embeddings, "embeddings")
    classes = zero_shot_classifier(class_embeddings)
    return jnp.argmax(embeddings.astype(jnp.float32) @ classes.T, axis=-1)


def zero_shot_accuracy(embeddings: Array, class_embeddings: Array, labels: Array) -> Array:
    """Top-1 zero-shot accuracy, a scalar."""
    return jnp.mean(zero_shot_predict(embeddings, class_embeddings) == labels)


# --- linear probe ----------------------------------------------------------------


def _probe_loss(params, x, y, l2):
    logits = x @ params["w"] + params["b"]
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return nll + 0.5 * l2 * jnp.sum(params["w"] ** 2)


@functools.partial(jax.jit, static_argnames=("num_classes", "steps"))
def _fit_probe(x, y, l2, num_classes: int, steps: int):
    params = {
        "w": jnp.zeros((x.shape[1], num_classes), jnp.float32),
        "b": jnp.zeros((num_classes,), jnp.float32),
    }
    loss = functools.partial(_probe_loss, x=x, y=y, l2=l2)
    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)

    def body(_, carry):
        params, state = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=loss)
        return optax.apply_updates(params, updates), state

    params, _ = jax.lax.fori_loop(0, steps, body, (params, opt.init(params)))
    return params, loss(params)


def linear_probe(
    train_x: Array,
    train_y: Array,
    num_classes: int,
    *,
    l2: float = 1e-4,
    steps: int = 100,
) -> Tuple[Dict[str, Array], Array]:
    """Fits softmax regression on frozen features (see the module docstring).

    Args:
      train_x: (N, E) features; train_y: (N,) int labels in [0, num_classes).

    Returns:
      (params {"w": (E, C), "b": (C,)}, final training objective).
    """
    _check_2d(train_x, "train_x")
    if train_y.shape != train_x.shape[:1]:
        raise RetrievalInputError(
            f"train_y must be ({train_x.shape[0]},) labels, got shape {tuple(train_y.shape)}"
        )
    return _fit_probe(
        jnp.asarray(train_x, jnp.float32), jnp.asarray(train_y, jnp.int32), jnp.float32(l2), num_classes, steps
    )


def linear_probe_predict(params: Dict[str, Array], x: Array) -> Array:
    """(N, E) features -> (N,) predicted class."""
    return jnp.argmax(x.astype(jnp.float32) @ params["w"] + params["b"], axis=-1)


__all__ = [
    "RetrievalInputError",
    "linear_probe",
    "linear_probe_predict",
    "recall_at_k",
    "retrieval_metrics",
    "retrieval_ranks",
    "zero_shot_accuracy",
    "zero_shot_classifier",
    "zero_shot_predict",
]
