"""Autoregressive decoding: greedy and beam search over a generic step function.

Both functions are pure and jit-compatible (``lax.while_loop`` with a fixed
maximum length, so one compiled program serves every batch) and know nothing
about the model: they call

    step_fn(tokens (N,) int32, cache) -> (logits (N, V), new cache)

which scores the next token given the token just emitted (the BOS id at the
first step) and an arbitrary cache pytree the model carries from step to step
(KV caches, LSTM state, a position counter ...). The captioner builds its
step_fn in :func:`mmjax.models.captioner.make_step_fn`; tests plug in toy ones.

Conventions:

* Outputs exclude BOS and are right-padded with ``pad_id`` after EOS (EOS
  itself is kept).
* A sequence's length |Y| counts the generated tokens including EOS; the GNMT
  length penalty is lp(Y) = ((5 + |Y|) / 6)^alpha and a finished beam's score
  is log P(Y) / lp(Y) (alpha = 0: plain log-probability).
* Beam search runs the N = B*K beams of B examples as one batch, example major
  (beam k of example b is row b*K + k). When beams are reordered, every cache
  leaf whose leading dimension is B*K is gathered along it; other leaves (for
  instance a scalar cache index shared by all rows) are left alone. Use
  :func:`tile_beams` to expand a (B, ...) cache or encoder output to (B*K, ...).
* Each step keeps the 2K best continuations so that K stay alive even if up
  to K of them end in EOS. Those ending in EOS enter the finished set with
  their final score and are never touched again (finished beams are frozen);
  the finished set keeps the K best. The loop stops at ``max_len`` or once no
  alive beam can still beat the worst of K finished beams (its best possible
  score is log P / lp(max_len), as log P only falls and lp only grows). An
  example with no finished beam at ``max_len`` returns its alive beams,
  scored at length ``max_len``.
"""
from __future__ import annotations

from typing import Any, Callable, Tuple

import jax
import jax.numpy as jnp

from mmjax import errors

Array = jax.Array
StepFn = Callable[[Array, Any], Tuple[Array, Any]]

NEG = -1.0e9  # finite "minus infinity": sums and differences stay NaN-free


class DecodingError(errors.ConfigError):
    """Bad decoding arguments (sizes, lengths, ids)."""


def length_penalty(length: Array, alpha: float) -> Array:
    """GNMT length penalty ((5 + length) / 6) ** alpha."""
    return ((5.0 + length.astype(jnp.float32)) / 6.0) ** alpha


def tile_beams(tree: Any, beam_size: int) -> Any:
    """Repeats every leaf's rows K times: (B, ...) -> (B*K, ...), example major."""
    return jax.tree.map(lambda x: jnp.repeat(x, beam_size, axis=0), tree)


def gather_beams(tree: Any, beam_indices: Array, batch_size: int, beam_size: int) -> Any:
    """Reorders per-beam cache rows: new row b*K + k <- old row b*K + beam_indices[b, k].

    Only leaves with leading dimension B*K are gathered (see the module docstring).
    """
    flat = (jnp.arange(batch_size)[:, None] * beam_size + beam_indices).reshape(-1)
    n = batch_size * beam_size

    def gather(x):
        if getattr(x, "ndim", 0) >= 1 and x.shape[0] == n:
            return jnp.take(x, flat, axis=0)
        return x

    return jax.tree.map(gather, tree)


def _check(batch_size: int, max_len: int, beam_size: int = 1) -> None:
    if batch_size < 1 or max_len < 1 or beam_size < 1:
        raise DecodingError(
            f"decoding needs batch_size, max_len and beam_size >= 1; got {batch_size}, {max_len}, {beam_size}"
        )


def greedy_decode(
    step_fn: StepFn,
    cache: Any,
    batch_size: int,
    max_len: int,
    *,
    bos_id: int,
    eos_id: int,
    pad_id: int = 0,
) -> Tuple[Array, Array]:
    """Greedy decoding.

    Args:
      step_fn: see the module docstring; called on (batch_size,) tokens.
      cache: initial cache for ``batch_size`` rows.

    Returns:
      tokens (B, max_len) int32 (EOS kept, pad after it) and the sum of the
      chosen tokens' log-probabilities (B,) float32.
    """
    _check(batch_size, max_len)
    B = batch_size

    def cond(state):
        i, _, _, _, _, finished = state
        return (i < max_len) & ~jnp.all(finished)

    def body(state):
        i, last, cache, out, logp, finished = state
        logits, cache = step_fn(last, cache)
        lp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        nxt = jnp.argmax(lp, axis=-1).astype(jnp.int32)
        gain = jnp.take_along_axis(lp, nxt[:, None], axis=-1)[:, 0]
        nxt = jnp.where(finished, pad_id, nxt)
        logp = logp + jnp.where(finished, 0.0, gain)
        out = out.at[:, i].set(nxt)
        return i + 1, nxt, cache, out, logp, finished | (nxt == eos_id)

    state = (
        jnp.int32(0),
        jnp.full((B,), bos_id, jnp.int32),
        cache,
        jnp.full((B, max_len), pad_id, jnp.int32),
        jnp.zeros((B,), jnp.float32),
        jnp.zeros((B,), bool),
    )
    _, _, _, out, logp, _ = jax.lax.while_loop(cond, body, state)
    return out, logp


def beam_search(
    step_fn: StepFn,
    cache: Any,
    batch_size: int,
    beam_size: int,
    max_len: int,
    *,
    bos_id: int,
    eos_id: int,
    pad_id: int = 0,
    alpha: float = 0.6,
) -> Tuple[Array, Array]:
    """Beam search with GNMT length penalty (see the module docstring).

    Args:
      step_fn: called on (B*K,) tokens.
      cache: initial cache for B*K rows (e.g. ``tile_beams(cache_B, K)``).

    Returns:
      tokens (B, K, max_len) int32 and scores (B, K) float32 (length-normalised
      log-probabilities), best beam first.
    """
    _check(batch_size, max_len, beam_size)
    B, K, L = batch_size, beam_size, max_len

    def take(x, idx):  # x (B, M, ...), idx (B, J) -> (B, J, ...)
        return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)

    def cond(state):
        i, alive_logp, fin_score = state[0], state[3], state[5]
        bound = alive_logp[:, 0] / length_penalty(jnp.int32(L), alpha)
        done = fin_score[:, -1] >= bound  # the K-th finished beam beats every alive one
        return (i < L) & ~jnp.all(done)

    def body(state):
        i, cache, alive_seq, alive_logp, fin_seq, fin_score, last = state
        logits, cache = step_fn(last.reshape(B * K), cache)
        V = logits.shape[-1]
        lp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1).reshape(B, K, V)
        cand = (alive_logp[:, :, None] + lp).reshape(B, K * V)
        top_lp, top_idx = jax.lax.top_k(cand, min(2 * K, K * V))
        src = top_idx // V
        tok = (top_idx % V).astype(jnp.int32)
        seqs = take(alive_seq, src).at[:, :, i].set(tok)
        is_eos = tok == eos_id

        # Alive: the K best continuations that did not just end.
        a_lp, a_pos = jax.lax.top_k(jnp.where(is_eos, 2 * NEG, top_lp), K)
        alive_seq = take(seqs, a_pos)
        last = take(tok, a_pos)
        cache = gather_beams(cache, take(src, a_pos), B, K)

        # Finished: merge the new EOS endings (scored once, now) into the frozen set.
        new_score = jnp.where(is_eos, top_lp / length_penalty(i + 1, alpha), NEG)
        all_score = jnp.concatenate([fin_score, new_score], axis=1)
        all_seq = jnp.concatenate([fin_seq, seqs], axis=1)
        fin_score, f_pos = jax.lax.top_k(all_score, K)
        fin_seq = take(all_seq, f_pos)
        return i + 1, cache, alive_seq, a_lp, fin_seq, fin_score, last

    alive_logp = jnp.tile(jnp.array([0.0] + [NEG] * (K - 1), jnp.float32), (B, 1))
    state = (
        jnp.int32(0),
        cache,
        jnp.full((B, K, L), pad_id, jnp.int32),
        alive_logp,
        jnp.full((B, K, L), pad_id, jnp.int32),
        jnp.full((B, K), NEG, jnp.float32),
        jnp.full((B, K), bos_id, jnp.int32),
    )
    i, _, alive_seq, alive_logp, fin_seq, fin_score, _ = jax.lax.while_loop(cond, body, state)
    # Padding after EOS: the step that wrote EOS set position i; later positions
    # of a finished copy were never written, so they are still pad_id.
    any_finished = fin_score[:, :1] > NEG / 2
    alive_score = alive_logp / length_penalty(i, alpha)
    tokens = jnp.where(any_finished[:, :, None], fin_seq, alive_seq)
    scores = jnp.where(any_finished, fin_score, alive_score)
    return tokens, scores


__all__ = [
    "DecodingError",
    "beam_search",
    "gather_beams",
    "greedy_decode",
    "length_penalty",
    "tile_beams",
]
