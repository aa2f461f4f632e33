"""Greedy and beam search on toy step functions with known answers."""
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.models import decoding as D

BOS, EOS, PAD = 0, 3, 5  # toy ids (pad is never scored)


def first_order_step(table):
    """Next-token log-probs depend only on the token just fed; cache counts steps."""
    table = jnp.asarray(table, jnp.float32)

    def step_fn(tokens, cache):
        return table[tokens], {"t": cache["t"] + 1, "rows": cache["rows"]}

    return step_fn


def second_order_step(table):
    """Log-probs depend on the previous two tokens: the older one lives in the
    cache, so a wrong beam reordering of the cache changes the answer."""
    table = jnp.asarray(table, jnp.float32)

    def step_fn(tokens, cache):
        return table[cache["prev"], tokens], {"prev": tokens}

    return step_fn


def test_beam_one_equals_greedy():
    rng = np.random.default_rng(0)
    V, B, L = 6, 3, 5
    # Random first-order model, batch examples differ via a per-row bias in the cache.
    table = rng.normal(size=(V, V)) * 2
    bias = jnp.asarray(rng.normal(size=(B, V)), jnp.float32)

    def step_fn(tokens, cache):
        return jnp.asarray(table, jnp.float32)[tokens] + cache["bias"], cache

    cache = {"bias": bias}
    greedy = jax.jit(lambda c: D.greedy_decode(step_fn, c, B, L, bos_id=BOS, eos_id=EOS, pad_id=PAD))
    g_tok, g_score = greedy(cache)
    beam = jax.jit(lambda c: D.beam_search(step_fn, c, B, 1, L, bos_id=BOS, eos_id=EOS, pad_id=PAD, alpha=0.0))
    b_tok, b_score = beam(D.tile_beams(cache, 1))
    np.testing.assert_array_equal(b_tok[:, 0], g_tok)
    np.testing.assert_allclose(b_score[:, 0], g_score, rtol=1e-6)
    # Greedy reference in numpy.
    logp = np.asarray(jax.nn.log_softmax(jnp.asarray(table)[None] + bias[:, None], -1))  # (B, V, V)
    for b in range(B):
        tok, out, total = BOS, [], 0.0
        for _ in range(L):
            nxt = int(np.argmax(logp[b, tok]))
            total += logp[b, tok, nxt]
            out.append(nxt)
            tok = nxt
            if nxt == EOS:
                break
        out += [PAD] * (L - len(out))
        np.testing.assert_array_equal(g_tok[b], out)
        np.testing.assert_allclose(g_score[b], total, rtol=1e-5)


def test_beam_finds_better_sequence_than_greedy():
    # Vocabulary {0: BOS, 1: A, 2: B, 3: EOS, 4: C}. After BOS: A 0.6, B 0.4.
    # After A: EOS 0.35, C 0.33, A 0.32 (A's continuation is flat);
    # after B: EOS 0.9. Greedy: A EOS (0.21); best: B EOS (0.36).
    p = np.full((5, 5), 1e-6)
    p[BOS, 1], p[BOS, 2] = 0.6, 0.4
    p[1, EOS], p[1, 4], p[1, 1] = 0.35, 0.33, 0.32
    p[2, EOS] = 0.9
    p[2, 4] = 0.1
    p[4, EOS] = 1.0
    table = np.log(p / p.sum(1, keepdims=True))
    step_fn = first_order_step(table)
    cache = {"t": jnp.int32(0), "rows": jnp.zeros((1,))}
    g_tok, g_score = D.greedy_decode(step_fn, cache, 1, 4, bos_id=BOS, eos_id=EOS, pad_id=PAD)
    np.testing.assert_array_equal(g_tok[0], [1, EOS, PAD, PAD])
    np.testing.assert_allclose(g_score[0], math.log(0.6 * 0.35), rtol=1e-4)
    cache = {"t": jnp.int32(0), "rows": jnp.zeros((2,))}
    tok, score = jax.jit(
        lambda c: D.beam_search(step_fn, c, 1, 2, 4, bos_id=BOS, eos_id=EOS, pad_id=PAD, alpha=0.0)
    )(cache)
    np.testing.assert_array_equal(tok[0, 0], [2, EOS, PAD, PAD])
    np.testing.assert_allclose(score[0, 0], math.log(0.4 * 0.9), rtol=1e-4)
    np.testing.assert_array_equal(tok[0, 1], [1, EOS, PAD, PAD])  # second best, frozen at its score
    np.testing.assert_allclose(score[0, 1], math.log(0.6 * 0.35), rtol=1e-4)


@pytest.mark.parametrize("alpha", [0.0, 0.6])
def test_exhaustive_beam_equals_brute_force(alpha):
    # V = 4 (ids 0..3, EOS = 3, BOS = 0), max_len 3: at most 3 * 3 = 9 alive
    # prefixes, so K = 9 keeps every one and beam search is exact.
    V, L, K = 4, 3, 9
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(V, V, V)) * 1.5
    table = np.asarray(jax.nn.log_softmax(jnp.asarray(logits), -1))
    best = {}
    for n in range(1, L + 1):
        for prefix in itertools.product([0, 1, 2], repeat=n - 1):
            seq = list(prefix) + [EOS]
            prev, tok, lp = BOS, BOS, 0.0
            for s in seq:
                lp += table[prev, tok, s]
                prev, tok = tok, s
            best[tuple(seq)] = lp / ((5 + n) / 6) ** alpha
    ranked = sorted(best.items(), key=lambda kv: -kv[1])
    step_fn = second_order_step(table)
    for B in (2,):  # two examples: checks that they do not mix in the cache gather
        cache = {"prev": jnp.full((B * K,), BOS, jnp.int32)}
        tok, score = jax.jit(
            lambda c: D.beam_search(step_fn, c, B, K, L, bos_id=BOS, eos_id=EOS, pad_id=PAD, alpha=alpha)
        )(cache)
        for b in range(B):
            for k in range(3):
                seq, s = ranked[k]
                np.testing.assert_array_equal(tok[b, k], list(seq) + [PAD] * (L - len(seq)))
                np.testing.assert_allclose(score[b, k], s, rtol=1e-5)


def test_length_penalty_and_gather():
    np.testing.assert_allclose(D.length_penalty(jnp.int32(7), 0.6), (12 / 6) ** 0.6, rtol=1e-6)
    cache = {"x": jnp.arange(6) * 10, "i": jnp.int32(3)}
    out = D.gather_beams(cache, jnp.array([[2, 0, 0], [1, 1, 2]]), 2, 3)
    np.testing.assert_array_equal(out["x"], [20, 0, 0, 40, 40, 50])
    assert int(out["i"]) == 3
    with pytest.raises(D.DecodingError, match="beam_size"):
        D.beam_search(lambda t, c: (t, c), {}, 1, 0, 3, bos_id=0, eos_id=1)
