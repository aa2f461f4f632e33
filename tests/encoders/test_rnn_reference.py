"""Bidirectional LSTM / GRU text encoders against a plain-numpy recurrence."""
import functools

import flax.linen as nn
import jax
import numpy as np
import pytest

from mmjax import encoders

jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})
sigmoid = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731


def _dense(p, x):
    return x @ p["kernel"] + p.get("bias", 0.0)


def lstm_step(p, carry, x):
    c, h = carry
    gate = lambda name, act: act(_dense(p["i" + name], x) + _dense(p["h" + name], h))  # noqa: E731
    i, f, g, o = gate("i", sigmoid), gate("f", sigmoid), gate("g", np.tanh), gate("o", sigmoid)
    c = f * c + i * g
    h = o * np.tanh(c)
    return (c, h), h


def gru_step(p, h, x):
    r = sigmoid(_dense(p["ir"], x) + _dense(p["hr"], h))
    z = sigmoid(_dense(p["iz"], x) + _dense(p["hz"], h))
    n = np.tanh(_dense(p["in"], x) + r * _dense(p["hn"], h))
    h = (1 - z) * n + z * h
    return h, h


def run(step, p, xs, hidden, lstm):
    carry = (np.zeros(hidden), np.zeros(hidden)) if lstm else np.zeros(hidden)
    outs = []
    for x in xs:
        carry, out = step(p, carry, x)
        outs.append(out)
    return np.stack(outs), out


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_bidirectional_matches_numpy(cell):
    hidden = 5
    model = encoders.create(cell, vocab_size=12, embed_dim=4, hidden_dim=hidden, bidirectional=True, pool="final")
    ids = np.array([[3, 4, 5, 6, 7, 8], [9, 2, 11, 0, 0, 0], [5, 0, 0, 0, 0, 0]], np.int32)
    mask = ids != 0
    garbage = np.where(mask, ids, 7).astype(np.int32)  # real-looking ids in the padding
    variables = jit(model.init)(jax.random.key(0, impl="unsafe_rbg"), ids)
    out = jit(model.apply)(variables, garbage, mask)
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), nn.unbox(variables["params"]))
    step = lstm_step if cell == "lstm" else gru_step
    for b, n in enumerate(mask.sum(1)):
        xs = p["embed"]["embedding"][ids[b, :n]]
        fwd_out, fwd_final = run(step, p["fwd_cell_0"], xs, hidden, cell == "lstm")
        # The backward direction reads the real tokens last-to-first, then is re-aligned.
        bwd_out, bwd_final = run(step, p["bwd_cell_0"], xs[::-1], hidden, cell == "lstm")
        np.testing.assert_allclose(out.tokens[b, :n], np.concatenate([fwd_out, bwd_out[::-1]], -1), atol=1e-5)
        np.testing.assert_allclose(out.pooled[b], np.concatenate([fwd_final, bwd_final]), atol=1e-5)
        np.testing.assert_array_equal(out.tokens[b, n:], 0)
    # The backward state is not just the forward cell run again: reversing the input matters.
    assert np.abs(np.asarray(out.pooled[0, :hidden] - out.pooled[0, hidden:])).max() > 1e-3
