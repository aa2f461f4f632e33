"""Losses and metrics against plain numpy formulas, hand counts and scikit-learn."""
import numpy as np
import pytest
import jax.numpy as jnp

from mmjax import losses, metrics


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_softmax_xent_with_label_smoothing_matches_numpy():
    rng = np.random.RandomState(0)
    logits = rng.randn(5, 4).astype(np.float32)
    labels = np.array([0, 3, 1, 1, 2])
    eps = 0.1
    target = np.full((5, 4), eps / 4)
    target[np.arange(5), labels] += 1 - eps
    want = -(target * _log_softmax(logits)).sum(-1)
    got = losses.softmax_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), label_smoothing=eps)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    cw = np.array([1.0, 2.0, 0.5, 3.0], np.float32)
    got_w = losses.softmax_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), class_weights=cw)
    np.testing.assert_allclose(got_w, -_log_softmax(logits)[np.arange(5), labels] * cw[labels], rtol=1e-5)


def test_sigmoid_bce_matches_numpy_and_is_stable():
    logits = np.array([[2.0, -1.0, 0.0], [100.0, -100.0, 3.0]], np.float32)
    y = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]], np.float32)
    got = np.asarray(losses.sigmoid_binary_cross_entropy(jnp.asarray(logits), jnp.asarray(y)))
    x = logits.astype(np.float64)
    # log(1+exp(x)) - x*y, computed exactly in float64 via logaddexp.
    want = (np.logaddexp(0, x) - x * y).mean(-1)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert np.all(np.isfinite(got))


def test_weighted_sum_and_bad_shapes():
    total, w = losses.weighted_sum(jnp.array([1.0, 2.0, 4.0]), jnp.array([1.0, 0.0, 0.5]))
    assert float(total) == 3.0 and float(w) == 1.5
    with pytest.raises(ValueError, match="labels must be"):
        losses.softmax_cross_entropy(jnp.zeros((2, 3)), jnp.zeros((2, 3), jnp.int32))
    with pytest.raises(ValueError, match="label_smoothing"):
        losses.softmax_cross_entropy(jnp.zeros((2, 3)), jnp.zeros((2,), jnp.int32), label_smoothing=1.5)


def test_confusion_prf_by_hand():
    y = [0, 0, 1, 1, 1, 2]
    p = [0, 1, 1, 1, 0, 0]
    cm = metrics.confusion_matrix(y, p, 3)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [1, 2, 0], [1, 0, 0]])
    prf = metrics.precision_recall_f1(cm)
    np.testing.assert_allclose(prf["precision"], [1 / 3, 2 / 3, 0.0])
    np.testing.assert_allclose(prf["recall"], [1 / 2, 2 / 3, 0.0])
    np.testing.assert_allclose(prf["f1"], [0.4, 2 / 3, 0.0])
    assert metrics.accuracy(cm) == pytest.approx(0.5)
    assert metrics.macro_f1(cm) == pytest.approx((0.4 + 2 / 3) / 3)
    # a 4th class absent from the split (and never predicted) drags macro_f1 but not macro_f1_present
    cm4 = np.pad(cm, ((0, 1), (0, 1)))
    assert metrics.macro_f1(cm4) == pytest.approx((0.4 + 2 / 3) / 4)
    assert metrics.macro_f1_present(cm4) == pytest.approx((0.4 + 2 / 3 + 0.0) / 3)


def test_against_sklearn():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.RandomState(1)
    y = rng.randint(0, 4, 60)
    scores = rng.rand(60, 4) + 0.8 * np.eye(4)[y]
    scores[:5, 0] = 0.5  # ties
    pred = scores.argmax(1)
    cm = metrics.confusion_matrix(y, pred, 4)
    np.testing.assert_array_equal(cm, sk.confusion_matrix(y, pred, labels=range(4)))
    assert metrics.macro_f1(cm) == pytest.approx(sk.f1_score(y, pred, average="macro"))
    keep = y != 3  # drop class 3's examples: sklearn over the present labels == macro_f1_present
    cm3 = metrics.confusion_matrix(y[keep], pred[keep], 4)
    assert metrics.macro_f1_present(cm3) == pytest.approx(
        sk.f1_score(y[keep], pred[keep], labels=[0, 1, 2], average="macro", zero_division=0))
    probs = scores / scores.sum(1, keepdims=True)
    assert metrics.roc_auc_ovr(y, probs) == pytest.approx(
        sk.roc_auc_score(y, probs, multi_class="ovr", average="macro"))


def test_roc_auc_by_hand():
    # Class 1: positives score 0.9, 0.4; negatives 0.5, 0.1 -> pairs won: (0.9>0.5, 0.9>0.1, 0.4>0.1) = 3/4.
    labels = np.array([1, 1, 0, 0])
    scores = np.array([[0.1, 0.9], [0.6, 0.4], [0.5, 0.5], [0.9, 0.1]])
    assert metrics.roc_auc_per_class(labels, scores)[1] == pytest.approx(0.75)
