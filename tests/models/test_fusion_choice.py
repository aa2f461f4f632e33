"""fusion_choice.resolve: every spelling of placement/fusion means one thing; bad ones name their keys."""
import flax.linen as nn
import jax
import numpy as np
import pytest

from mmjax import errors
from mmjax.fusion.late import LateFusion
from mmjax.fusion.registry import FUSION
from mmjax.models import fusion_choice
from mmjax.models.classifier import Classifier, build_classifier
from mmjax.models.fusion_choice import FusionChoice, ModelConfigError, resolve, unimodal

TWO = {"a": {"name": "mlp", "features": [4]}, "b": {"name": "mlp", "features": [4]}}
ONE = {"a": {"name": "mlp", "features": [4]}}

# (config.model, expected (placement, block, block_config)), written out by hand from the module docstring.
TABLE = [
    ({"encoders": TWO}, ("middle", "concat", {})),
    ({"encoders": TWO, "fusion": "gated", "fusion_config": {"out_dim": 8}}, ("middle", "gated", {"out_dim": 8})),
    ({"encoders": TWO, "placement": "middle", "fusion": "late"}, ("late", "late", {})),
    ({"encoders": TWO, "fusion": "late", "fusion_config": {"combine": "learned"}},
     ("late", "late", {"combine": "learned"})),
    ({"encoders": TWO, "placement": "late"}, ("late", "late", {})),  # the old spelling
    ({"encoders": TWO, "placement": "late", "fusion": "concat"}, ("late", "late", {})),
    ({"encoders": TWO, "placement": "late", "fusion": "late"}, ("late", "late", {})),
    ({"encoders": TWO, "placement": "late", "fusion": "weighted", "fusion_config": {"out_dim": 6}},
     ("late", "weighted", {"out_dim": 6})),
    ({"encoders": TWO, "placement": "early", "fusion": "late"}, ("late", "late", {})),  # whatever placement says
    ({"encoders": ONE, "fusion": "none"}, ("middle", None, {})),
    ({"encoders": ONE, "fusion": "none", "fusion_config": {"out_dim": 8}}, ("middle", None, {})),
    ({"encoders": TWO, "placement": "early"}, ("early", None, {})),
    ({"encoders": TWO, "placement": "early", "fusion": "gated", "fusion_config": {"out_dim": 8}},
     ("early", None, {})),
    ({"encoders": TWO, "placement": "early", "fusion": "none"}, ("early", None, {})),
]


@pytest.mark.parametrize("model, want", TABLE)
def test_each_spelling_resolves_as_documented(model, want):
    assert resolve(model) == FusionChoice(*want)


def test_resolve_reads_config_dicts():
    import ml_collections

    model = ml_collections.ConfigDict({"encoders": TWO, "fusion": "late", "placement": "middle",
                                       "fusion_config": {"hidden_dim": 3}})
    assert resolve(model) == FusionChoice("late", "late", {"hidden_dim": 3})


def test_a_logit_block_gets_the_number_of_classes_unless_its_config_sets_out_dim():
    assert resolve({"fusion": "late"}, num_classes=7).block_config == {"out_dim": 7}
    assert resolve({"placement": "late"}, num_classes=7).block_config == {"out_dim": 7}
    assert resolve({"fusion": "late", "fusion_config": {"out_dim": 64}}, num_classes=7).block_config == {"out_dim": 64}
    # Other blocks, logits-combining ones included, keep their own out_dim.
    assert resolve({"placement": "late", "fusion": "weighted"}, num_classes=7).block_config == {}
    assert resolve({"fusion": "concat"}, num_classes=7).block_config == {}


def test_decision_level_comes_from_the_block_class_not_its_name(monkeypatch):
    assert LateFusion.fuses_logits is True and "fuses_logits" not in LateFusion.__dataclass_fields__
    assert fusion_choice.fuses_logits("late") and not fusion_choice.fuses_logits("concat")

    class Vote(nn.Module):
        fuses_logits = True
        out_dim: int = 1

    monkeypatch.setitem(FUSION._entries, "vote", Vote)
    assert resolve({"fusion": "vote"}, num_classes=3) == FusionChoice("late", "vote", {"out_dim": 3})


@pytest.mark.parametrize("model, keys", [
    ({"fusion": "concatt"}, ["model.fusion", "Did you mean 'concat'?"]),
    ({"placement": "late", "fusion": "wieghted"}, ["model.fusion", "Did you mean 'weighted'?"]),
    ({"placement": "early", "fusion": "nope"}, ["model.fusion", "'nope'"]),
    ({"placement": "sideways"}, ["model.placement", "'sideways'"]),
    ({"encoders": ONE, "placement": "late", "fusion": "none"}, ["model.fusion='none'", "model.placement='late'"]),
    ({"encoders": TWO, "fusion": "none"}, ["model.fusion='none'", "model.encoders", "['a', 'b']"]),
    ({"fusion": "none"}, ["model.fusion='none'", "model.encoders", "[]"]),
])
def test_bad_names_and_combinations_are_one_line_config_errors_naming_the_keys(model, keys):
    with pytest.raises(errors.ConfigError) as info:
        resolve(model)
    message = str(info.value)
    assert "\n" not in message
    for key in keys:
        assert key in message


def test_unimodal_keeps_one_encoder_and_drops_the_fusion():
    model = {"encoders": TWO, "placement": "late", "fusion": "gated", "fusion_config": {"out_dim": 8},
             "head_hidden": (5,)}
    one = unimodal(model, "b")
    assert one == {"encoders": {"b": TWO["b"]}, "placement": "middle", "fusion": "none", "fusion_config": {},
                   "head_hidden": (5,)}
    assert model["encoders"] == TWO and model["fusion"] == "gated"  # a copy: the input is not edited
    assert resolve(one) == FusionChoice("middle", None, {})
    with pytest.raises(ModelConfigError, match=r"model.encoders.c.*\['a', 'b'\]"):
        unimodal(model, "c")
    with pytest.raises(ModelConfigError, match="model.encoders.img"):
        unimodal({"placement": "early", "encoders": {"a": TWO["a"], "img": None}}, "img")


def _batch(b=4):
    r = np.random.RandomState(0)
    return {"inputs": {"a": r.randn(b, 5).astype(np.float32), "b": r.randn(b, 3).astype(np.float32)},
            "modality_mask": {"a": np.array([True, False, True, True]), "b": np.array([True, True, False, True])}}


def test_unimodal_classifier_is_encoder_then_head():
    model = build_classifier(unimodal({"encoders": TWO, "fusion_config": {"out_dim": 8}}, "a"), 3)
    params = nn.unbox(model.init(jax.random.PRNGKey(0), _batch()))["params"]
    assert sorted(params) == ["encoder_a_0", "head"]


def test_fusion_late_in_middle_placement_is_the_old_placement_late_and_matches_a_hand_computation():
    old = build_classifier({"encoders": TWO, "placement": "late"}, 3)
    new = build_classifier({"encoders": TWO, "placement": "middle", "fusion": "late"}, 3)
    batch = _batch()
    params = nn.unbox(old.init(jax.random.PRNGKey(0), batch))["params"]
    assert jax.tree.structure(params) == jax.tree.structure(nn.unbox(new.init(jax.random.PRNGKey(0), batch))["params"])
    got = np.asarray(new.apply({"params": params}, batch))
    np.testing.assert_array_equal(got, np.asarray(old.apply({"params": params}, batch)))

    # By hand: encoder -> own head per modality (logits), LateFusion's head per modality on those
    # logits, then the mean over the modalities present in each example.
    p = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
    dense = lambda x, d: x @ d["kernel"] + d["bias"]  # noqa: E731
    fused, present = [], []
    for m in ("a", "b"):
        keep = batch["modality_mask"][m]
        x = np.where(keep[:, None], batch["inputs"][m], 0.0)
        logits = dense(dense(x, p[f"encoder_{m}_0"]["dense_0"]), p[f"head_{m}"]["out"])
        fused.append(dense(logits, p["fusion"][f"head_{m}"]))
        present.append(keep.astype(np.float64))
    w = np.stack(present, 1) / np.maximum(np.stack(present, 1).sum(1, keepdims=True), 1.0)
    want = np.einsum("bm,bmc->bc", w, np.stack(fused, 1))
    assert got.shape == (4, 3)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_the_classifier_raises_resolve_errors():
    with pytest.raises(ModelConfigError, match=r"model.fusion='none'.*model.encoders"):
        Classifier(num_classes=2, encoders=TWO, fusion="none").init(jax.random.PRNGKey(0), _batch())
