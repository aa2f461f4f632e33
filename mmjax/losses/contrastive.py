"""Contrastive losses for dual encoders: CLIP softmax InfoNCE and SigLIP sigmoid.

Both take two (B, E) embedding matrices whose row i is a positive pair
(usually L2-normalised) and learnable scalars:

* CLIP (Radford et al. 2021): logits = exp(log_scale) * a b^T, with the scale
  clamped to <= 100 as CLIP does (the clamp is on the forward value, so the
  gradient w.r.t. ``log_scale`` is zero once it sits above log 100);
  loss = (CE(logits, diag) + CE(logits^T, diag)) / 2, averaged over the batch.
* SigLIP (Zhai et al. 2023): logits = exp(t') a b^T + bias; every (i, j) pair is
  a binary problem with label +1 on the diagonal and -1 elsewhere;
  loss = -(1/B) sum_ij log sigmoid(label_ij * logits_ij). Init t' = log 10, bias = -10.

Global-batch negatives across devices. With the batch sharded over mesh
axes, :func:`sharded_clip_loss` / :func:`sharded_siglip_loss` run under
``jax.shard_map``: each device all-gathers the other tower's embeddings and
computes only its (local x global) logit block, so per-device memory is
O(B_local * B) instead of O(B^2); the per-device sums are combined with
``psum``. :func:`ring_siglip_loss` is the chunked variant of the SigLIP paper:
embeddings travel round a ring of devices with ``ppermute`` and each device only
ever holds a (B_local x B_local) block. All three equal the single-device
loss on the same global batch, gradients included (``all_gather``'s transpose
is a reduce-scatter, ``ppermute``'s is the reverse permutation).
"""
from __future__ import annotations

import math
from typing import Tuple, Union

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

from mmjax import errors
from mmjax.sharding import BatchShards, reshard_for

Array = jax.Array
AxisNames = Union[str, Tuple[str, ...]]

CLIP_INIT_LOG_SCALE = math.log(1 / 0.07)
CLIP_MAX_LOG_SCALE = math.log(100.0)
SIGLIP_INIT_LOG_SCALE = math.log(10.0)
SIGLIP_INIT_BIAS = -10.0


class ContrastiveLossError(errors.InputError):
    """Bad input to a contrastive loss (shapes, batch sizes, mesh axes)."""


def _check_pair(a: Array, b: Array, where: str) -> None:
    if a.ndim != 2 or b.ndim != 2:
        raise ContrastiveLossError(
            f"{where}: embeddings must be (B, E); got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if a.shape != b.shape:
        raise ContrastiveLossError(
            f"{where}: the two towers' embeddings must have equal shapes (B, E); "
            f"got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def clip_scale(log_scale: Array) -> Array:
    """exp(min(log_scale, log 100)): CLIP's clamped logit scale."""
    return jnp.exp(jnp.minimum(log_scale, CLIP_MAX_LOG_SCALE))


def _xent_rows(logits: Array, labels: Array) -> Array:
    """(R, C) logits, (R,) int labels -> (R,) cross-entropy (f32)."""
    logits = logits.astype(jnp.float32)
    logz = jax.nn.logsumexp(logits, axis=-1)
    return logz - jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]


def clip_loss(a: Array, b: Array, log_scale: Array) -> Array:
    """Symmetric InfoNCE. a, b (B, E); log_scale scalar -> scalar loss (mean over B)."""
    _check_pair(a, b, "clip_loss")
    logits = clip_scale(log_scale) * (a.astype(jnp.float32) @ b.astype(jnp.float32).T)
    labels = jnp.arange(a.shape[0])
    return 0.5 * (_xent_rows(logits, labels).mean() + _xent_rows(logits.T, labels).mean())


def _siglip_sum(a: Array, b: Array, log_scale: Array, bias: Array, positive_offset) -> Array:
    """Sum over the (Ba x Bb) block of -log sigmoid(z * logits); a[i] pairs with b[i + offset]."""
    logits = jnp.exp(log_scale) * (a.astype(jnp.float32) @ b.astype(jnp.float32).T) + bias
    rows = jnp.arange(a.shape[0])[:, None] + positive_offset
    labels = jnp.where(rows == jnp.arange(b.shape[0])[None, :], 1.0, -1.0)
    return -jax.nn.log_sigmoid(labels * logits).sum()


def siglip_loss(a: Array, b: Array, log_scale: Array, bias: Array) -> Array:
    """Pairwise sigmoid loss. a, b (B, E); log_scale (t'), bias scalars -> scalar
    loss, summed over all B^2 pairs and divided by B (as in the paper)."""
    _check_pair(a, b, "siglip_loss")
    return _siglip_sum(a, b, log_scale, bias, 0) / a.shape[0]


# --- sharded variants ---------------------------------------------------------


def _axes_tuple(axis_names: AxisNames) -> Tuple[str, ...]:
    return (axis_names,) if isinstance(axis_names, str) else tuple(axis_names)


def _check_mesh(mesh: Mesh, axes: Tuple[str, ...], a: Array, b: Array, where: str) -> int:
    _check_pair(a, b, where)
    missing = [ax for ax in axes if ax not in mesh.axis_names]
    if missing:
        raise ContrastiveLossError(f"{where}: mesh has axes {mesh.axis_names}, not {missing}")
    n = math.prod(mesh.shape[ax] for ax in axes)
    if a.shape[0] % n:
        raise ContrastiveLossError(
            f"{where}: global batch {a.shape[0]} is not divisible by the {n} devices on axes {axes}"
        )
    return n


def _psum(x, axes):
    return jax.lax.psum(x, axes) if axes else x


def clip_loss_shard(axes: Tuple[str, ...], a_l: Array, b_l: Array, log_scale: Array) -> Array:
    """:func:`clip_loss` of the global batch, seen from one shard of its rows (``axes``: the
    collective axes the rows are split over; ``()`` = all rows here). Each shard all-gathers the
    other tower and scores its (B/n x B) logits in both directions: memory O(B_local x B)."""
    n_local = a_l.shape[0]
    a_g, b_g = (jax.lax.all_gather(x, axes, tiled=True) if axes else x for x in (a_l, b_l))
    labels = (jax.lax.axis_index(axes) * n_local if axes else 0) + jnp.arange(n_local)
    scale = clip_scale(log_scale)
    f32 = jnp.float32
    a2b = _xent_rows(scale * (a_l.astype(f32) @ b_g.astype(f32).T), labels).sum()
    b2a = _xent_rows(scale * (b_l.astype(f32) @ a_g.astype(f32).T), labels).sum()
    return _psum(a2b + b2a, axes) / (2 * a_g.shape[0])


def siglip_loss_shard(axes: Tuple[str, ...], a_l: Array, b_l: Array, log_scale: Array, bias: Array) -> Array:
    """:func:`siglip_loss` of the global batch from one shard: its B/n rows of ``a`` against all
    B rows of ``b`` (all-gathered over ``axes``)."""
    b_g = jax.lax.all_gather(b_l, axes, tiled=True) if axes else b_l
    offset = jax.lax.axis_index(axes) * a_l.shape[0] if axes else 0
    return _psum(_siglip_sum(a_l, b_g, log_scale, bias, offset), axes) / b_g.shape[0]


def sharded_clip_loss(
    a: Array, b: Array, log_scale: Array, mesh: Mesh, axis_names: AxisNames = "data"
) -> Array:
    """:func:`clip_loss` on a global batch sharded over ``axis_names`` of ``mesh``
    (:func:`clip_loss_shard` under ``jax.shard_map``). a, b: global (B, E) arrays (row-sharded
    or not; they are resharded). Usable inside ``jax.jit``."""
    axes = _axes_tuple(axis_names)
    _check_mesh(mesh, axes, a, b, "sharded_clip_loss")
    return BatchShards(axes, mesh).map(clip_loss_shard, (a, b), (log_scale,))


def sharded_siglip_loss(
    a: Array, b: Array, log_scale: Array, bias: Array, mesh: Mesh, axis_names: AxisNames = "data"
) -> Array:
    """:func:`siglip_loss` on a sharded global batch (:func:`siglip_loss_shard` under ``jax.shard_map``)."""
    axes = _axes_tuple(axis_names)
    _check_mesh(mesh, axes, a, b, "sharded_siglip_loss")
    return BatchShards(axes, mesh).map(siglip_loss_shard, (a, b), (log_scale, bias))


def ring_siglip_loss(
    a: Array, b: Array, log_scale: Array, bias: Array, mesh: Mesh, axis_names: AxisNames = "data"
) -> Array:
    """Chunked SigLIP (the paper's Fig. 1): the ``b`` shards travel round a
    ring of the n devices with ``ppermute``; at step k each device scores its
    local ``a`` against the shard that started on device (i - k) mod n, so
    only positives appear at k = 0 and every later block is all negatives.
    Per-device memory O(B_local^2); n - 1 collective permutes."""
    axes = _axes_tuple(axis_names)
    n = _check_mesh(mesh, axes, a, b, "ring_siglip_loss")
    global_batch = a.shape[0]
    perm = [(i, (i + 1) % n) for i in range(n)]

    def local(a_l, b_l, log_scale, bias):
        total = _siglip_sum(a_l, b_l, log_scale, bias, 0)

        def body(_, carry):
            b_cur, acc = carry
            b_cur = jax.lax.ppermute(b_cur, axes, perm)
            # No positives off the diagonal block: offset past every column.
            return b_cur, acc + _siglip_sum(a_l, b_cur, log_scale, bias, b_cur.shape[0])

        _, total = jax.lax.fori_loop(0, n - 1, body, (b_l, total))
        return jax.lax.psum(total, axes) / global_batch

    spec = P(axes)
    a, b = reshard_for(mesh, spec, a, b)
    return jax.shard_map(
        local, mesh=mesh, in_specs=(spec, spec, P(), P()), out_specs=P()
    )(a, b, log_scale, bias)


__all__ = [
    "CLIP_INIT_LOG_SCALE",
    "CLIP_MAX_LOG_SCALE",
    "SIGLIP_INIT_BIAS",
    "SIGLIP_INIT_LOG_SCALE",
    "ContrastiveLossError",
    "clip_loss",
    "clip_loss_shard",
    "clip_scale",
    "ring_siglip_loss",
    "sharded_clip_loss",
    "sharded_siglip_loss",
    "siglip_loss",
    "siglip_loss_shard",
]
