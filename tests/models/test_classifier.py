"""Classifier: placements, combined encoders, missing modalities, config errors."""
import flax.linen as nn
import jax
import numpy as np
import pytest

from mmjax.models.classifier import Classifier, ModelConfigError, build_classifier

ENC = {"a": [{"name": "mlp", "features": [8]}, {"name": "mlp", "features": [4]}],
       "b": {"name": "mlp", "features": [6]}}


def _batch(b=4):
    r = np.random.RandomState(0)
    return {"inputs": {"a": r.randn(b, 5).astype(np.float32), "b": r.randn(b, 3).astype(np.float32)},
            "modality_mask": {"a": np.array([True, False, True, True]), "b": np.ones(b, bool)},
            "label": np.zeros(b, np.int32)}


@pytest.mark.parametrize("placement", ["middle", "early"])
def test_placements_give_logits_and_missing_modality_is_isolated(placement):
    model = build_classifier({"placement": placement, "encoders": ENC, "fusion_config": {"out_dim": 8},
                              "early_width": 8, "early_layers": 1, "early_heads": 2, "early_mlp_dim": 8}, 3)
    batch = _batch()
    variables = model.init(jax.random.PRNGKey(0), batch)
    logits = model.apply(variables, batch)
    assert logits.shape == (4, 3) and logits.dtype == np.float32
    # Garbage in a missing modality's slot changes nothing, for anyone.
    poisoned = jax.tree.map(lambda x: x, batch)
    poisoned["inputs"]["a"] = batch["inputs"]["a"].copy()
    poisoned["inputs"]["a"][1] = 1e6
    np.testing.assert_allclose(model.apply(variables, poisoned), logits, rtol=1e-6, atol=1e-6)
    # ... while a present example's input does matter.
    changed = jax.tree.map(lambda x: x, batch)
    changed["inputs"]["a"] = batch["inputs"]["a"] + 1.0
    diff = np.abs(np.asarray(model.apply(variables, changed)) - np.asarray(logits)).sum(-1)
    assert diff[0] > 1e-4 and diff[1] < 1e-6


def test_combined_encoders_concatenate_pooled_features():
    model = Classifier(num_classes=2, encoders=ENC, fusion="concat", fusion_config={})
    variables = nn.unbox(model.init(jax.random.PRNGKey(1), _batch()))
    # concat without projection: head input = (8 + 4) from "a" + 6 from "b".
    assert variables["params"]["head"]["out"]["kernel"].shape == (18, 2)
    assert set(variables["params"]) == {"encoder_a_0", "encoder_a_1", "encoder_b_0", "head"}  # concat has no weights


def test_middle_matches_a_hand_composed_forward():
    model = Classifier(num_classes=2, encoders={"a": {"name": "mlp", "features": [4]},
                                                "b": {"name": "mlp", "features": [4]}}, fusion_config={})
    batch = _batch()
    batch["modality_mask"] = {"a": np.ones(4, bool), "b": np.ones(4, bool)}
    p = nn.unbox(model.init(jax.random.PRNGKey(2), batch))["params"]
    ea = batch["inputs"]["a"] @ p["encoder_a_0"]["dense_0"]["kernel"] + p["encoder_a_0"]["dense_0"]["bias"]
    eb = batch["inputs"]["b"] @ p["encoder_b_0"]["dense_0"]["kernel"] + p["encoder_b_0"]["dense_0"]["bias"]
    want = np.concatenate([ea, eb], -1) @ p["head"]["out"]["kernel"] + p["head"]["out"]["bias"]
    np.testing.assert_allclose(model.apply({"params": p}, batch), want, rtol=1e-5, atol=1e-5)


def test_config_errors_name_the_problem():
    with pytest.raises(ModelConfigError, match="placement"):
        Classifier(num_classes=2, encoders=ENC, placement="sideways").init(jax.random.PRNGKey(0), _batch())
    with pytest.raises(ModelConfigError, match=r"\['c'\]"):
        Classifier(num_classes=2, encoders={"c": {"name": "mlp"}}).init(jax.random.PRNGKey(0), _batch())
    with pytest.raises(ModelConfigError, match="unknown classifier options"):
        build_classifier({"encoders": ENC, "fusoin": "concat"}, 2)
    with pytest.raises(ModelConfigError, match=r"^model.encoders.a.features\[1\] must be >= 1, got 0 \(encoder 'mlp'\)"):
        Classifier(num_classes=2, encoders={"a": {"name": "mlp", "features": [3, 0]}, "b": ENC["b"]}).init(
            jax.random.PRNGKey(0), _batch())
    with pytest.raises(ModelConfigError, match=r"^model.fusion_config.rank must be >= 1, got 0"):
        Classifier(num_classes=2, encoders=ENC, fusion="low_rank", fusion_config={"out_dim": 4, "rank": 0}).init(
            jax.random.PRNGKey(0), _batch())
    with pytest.raises(ModelConfigError, match="'name'"):
        Classifier(num_classes=2, encoders={"a": {"features": [3]}, "b": ENC["b"]}).init(
            jax.random.PRNGKey(0), _batch())
