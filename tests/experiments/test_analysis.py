"""Evaluation analyses against independent numpy references (no training)."""
import numpy as np
import pytest

from experiments import config_utils, modalities
from experiments.errors import UserError
from experiments.reports import analysis
from mmjax import metrics as metrics_lib


def _brute_roc(pos, scores):
    """(fpr, tpr) at every threshold t in the scores, predicting positive when score >= t."""
    pts = [(0.0, 0.0)]
    for t in sorted(set(scores.tolist()), reverse=True):
        pred = scores >= t
        pts.append(((pred & ~pos).sum() / (~pos).sum(), (pred & pos).sum() / pos.sum()))
    return np.array(pts)


def test_roc_curve_matches_brute_force_and_rank_auc():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 60)
    logits = rng.normal(size=(60, 3)) + np.eye(3)[labels]
    logits[:10, 0] = 0.5  # ties
    curves = analysis.roc_curves(labels, logits, np.ones(60))
    ref_auc = metrics_lib.roc_auc_per_class(labels, logits)
    for k in range(3):
        cur = curves[str(k)]
        np.testing.assert_allclose(np.stack([cur["fpr"], cur["tpr"]], 1), _brute_roc(labels == k, logits[:, k]))
        assert cur["auc"] == pytest.approx(ref_auc[k], abs=1e-12)


def test_full_metrics_ignores_padding_and_matches_numpy():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 40)
    logits = rng.normal(size=(40, 4))
    weights = np.r_[np.ones(33), np.zeros(7)]
    m = analysis.full_metrics(labels, logits, weights)
    keep = slice(0, 33)
    assert m["accuracy"] == pytest.approx(np.mean(logits[keep].argmax(1) == labels[keep]))
    p = np.exp(logits[keep]) / np.exp(logits[keep]).sum(1, keepdims=True)
    assert m["loss"] == pytest.approx(-np.mean(np.log(p[np.arange(33), labels[keep]])))
    assert m["num_examples"] == 33
    assert m["roc_auc_ovr"] == pytest.approx(np.nanmean(metrics_lib.roc_auc_per_class(labels[keep], logits[keep])))


def test_robustness_masks_and_noise_against_numpy_model():
    """A linear 'model' in numpy: masked-modality and noisy accuracies are recomputed by hand."""
    rng = np.random.default_rng(2)
    wa, wb = rng.normal(size=(3, 4)), rng.normal(size=(2, 4))

    def predict(b):
        ma = np.asarray(b["modality_mask"]["a"], np.float32)[:, None]
        mb = np.asarray(b["modality_mask"]["b"], np.float32)[:, None]
        return (b["inputs"]["a"] * ma) @ wa + (b["inputs"]["b"] * mb) @ wb

    batches = []
    for _ in range(3):
        a, b = rng.normal(size=(8, 3)).astype(np.float32), 3 * rng.normal(size=(8, 2)).astype(np.float32)
        batches.append(analysis.complete_masks({"inputs": {"a": a, "b": b, "ids": np.ones((8, 5), np.int32)},
                                                "label": np.argmax(a @ wa + b @ wb, 1)}))
    r = analysis.robustness(predict, batches, levels=(0.0, 1.0), seed=3)
    assert r["clean_accuracy"] == 1.0
    allb = {k: np.concatenate([b["inputs"][k] for b in batches]) for k in ("a", "b")}
    labels = np.concatenate([b["label"] for b in batches])
    assert r["masked"]["a"] == pytest.approx(np.mean(np.argmax(allb["b"] @ wb, 1) == labels))
    assert r["masked"]["b"] == pytest.approx(np.mean(np.argmax(allb["a"] @ wa, 1) == labels))
    assert set(r["noise"]) == {"a", "b"}  # integer ids get no additive noise
    assert r["input_std"]["b"] == pytest.approx(allb["b"].std(), rel=1e-5)
    assert r["noise"]["b"]["0.0"] == 1.0 and r["noise"]["b"]["1.0"] < 1.0


def test_modalities_switch_restricts_model_and_data():
    c = config_utils.load_config("av_digits")
    config_utils.apply_overrides(c, [("modalities", "audio")])
    modalities.restrict(c)
    assert sorted(c.model.encoders) == ["audio"] and sorted(c.data.modalities) == ["audio"]
    assert c.model.fusion == modalities.UNIMODAL
    c = config_utils.load_config("av_digits")
    with pytest.raises(UserError, match="modalities.*'video'.*\\['audio', 'image'\\]"):
        modalities.restrict(c, ("video",))
    for name in ("av_digits_image", "av_digits_audio"):
        c = config_utils.load_config(name)
        assert list(c.model.encoders) == [name.split("_")[-1]]
