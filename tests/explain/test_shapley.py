"""Exact modality Shapley values against a brute-force permutation average."""
import itertools
import math

import jax
import numpy as np
import pytest

from mmjax.explain import ExplainError, coalitions, shapley_values
from mmjax.models.classifier import Classifier

NAMES = ("a", "b", "c")


def _brute_force(v, players):
    """Shapley by definition: the mean over all orders of each player's marginal contribution."""
    phi = {p: 0.0 for p in players}
    for order in itertools.permutations(players):
        present = frozenset()
        for p in order:
            phi[p] += v(present | {p}) - v(present)
            present = present | {p}
    return {p: x / math.factorial(len(players)) for p, x in phi.items()}


def _toy_logits(batch):
    """Two classes; logit of class 1 = 2a + 1b - 0.5c + 3ab + 1.5abc (interactions), class 0 = 0.

    a/b/c count only where present; inputs are (K, 1) scalars per modality.
    """
    x = {m: np.asarray(batch["inputs"][m])[:, 0] * np.asarray(batch["modality_mask"][m]) for m in NAMES}
    s = 2 * x["a"] + x["b"] - 0.5 * x["c"] + 3 * x["a"] * x["b"] + 1.5 * x["a"] * x["b"] * x["c"]
    return np.stack([np.zeros_like(s), s], axis=1)


def _toy_batch():
    return {"inputs": {"a": np.array([[1.0], [0.5]]), "b": np.array([[1.0], [-1.0]]), "c": np.array([[2.0], [1.0]])},
            "label": np.array([1, 0])}


@pytest.mark.parametrize("value", ["logit", "probability"])
def test_matches_brute_force_on_a_function_with_interactions(value):
    batch = _toy_batch()
    out = shapley_values(_toy_logits, batch, target=[1, 1], value=value)
    for i in range(2):
        def v(present, i=i):
            b = {"inputs": {m: batch["inputs"][m][i:i + 1] for m in NAMES},
                 "modality_mask": {m: np.array([m in present]) for m in NAMES}}
            s = _toy_logits(b)[0]
            return s[1] if value == "logit" else float(np.exp(s[1]) / np.exp(s).sum())
        want = _brute_force(v, NAMES)
        got = out[i]["values"]
        assert got.keys() == want.keys()
        np.testing.assert_allclose([got[m] for m in NAMES], [want[m] for m in NAMES], rtol=1e-9, atol=1e-12)
        assert out[i]["empty"] == pytest.approx(v(frozenset()))
        assert out[i]["full"] == pytest.approx(v(frozenset(NAMES)))
    # Example 0 by hand (logits): a=1,b=1,c=2: the ab term splits 1.5/1.5, the abc term 1 each.
    if value == "logit":
        np.testing.assert_allclose([out[0]["values"][m] for m in NAMES], [2 + 1.5 + 1, 1 + 1.5 + 1, -1 + 1])


def test_efficiency_and_default_target_on_a_tiny_classifier():
    model = Classifier(num_classes=4, encoders={m: {"name": "mlp", "features": (8,)} for m in NAMES},
                       fusion="concat", fusion_config={"out_dim": 8})
    rng = np.random.RandomState(0)
    batch = {"inputs": {m: rng.randn(3, 5).astype(np.float32) for m in NAMES},
             "modality_mask": {"a": np.array([True, True, False]), "b": np.ones(3, bool), "c": np.ones(3, bool)}}
    variables = model.init(jax.random.PRNGKey(0), batch)
    calls = []

    def logits_fn(b):
        calls.append(len(b["modality_mask"]["a"]))
        return model.apply(variables, b)

    out = shapley_values(logits_fn, batch)
    assert calls == [8, 8, 8]  # one batched call of 2^3 coalitions per example
    full = np.asarray(model.apply(variables, batch))
    for i, r in enumerate(out):
        assert r["target"] == int(np.argmax(full[i]))
        assert sum(r["values"].values()) == pytest.approx(r["full"] - r["empty"], abs=1e-6)
        p = np.exp(full[i] - full[i].max())
        assert r["full"] == pytest.approx(float(p[r["target"]] / p.sum()), rel=1e-5)
    # A modality already missing in the example is absent in every coalition: value 0.
    assert out[2]["values"]["a"] == pytest.approx(0.0, abs=1e-7)
    assert abs(out[0]["values"]["a"]) > 1e-4


def test_refuses_more_than_eight_modalities_and_bad_options():
    assert coalitions(3).shape == (8, 3) and coalitions(3)[5].tolist() == [True, False, True]
    batch = {"inputs": {f"m{i}": np.zeros((1, 1)) for i in range(9)}}
    with pytest.raises(ExplainError, match="1 to 8 modalities"):
        shapley_values(lambda b: np.zeros((512, 2)), batch)
    with pytest.raises(ExplainError, match="value must be one of"):
        shapley_values(_toy_logits, _toy_batch(), value="margin")
    with pytest.raises(ExplainError, match=r"\['z'\] are not in"):
        shapley_values(_toy_logits, _toy_batch(), modalities=["a", "z"])
