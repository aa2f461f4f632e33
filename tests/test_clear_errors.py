"""Inputs that used to fail with a raw Python error (or not at all) get a one-line error naming them."""
import jax
import jax.numpy as jnp
import pytest

import mmjax.fusion as fusion
from mmjax.encoders.common import EncoderInputError
from mmjax.fusion.base import FusionInputError
from mmjax.models.classifier import ModelConfigError, build_classifier
from mmjax.registry import BadSizeError

KEY = jax.random.PRNGKey(0)
TWO = {"encoders": {"a": {"name": "mlp", "features": [4]}, "b": {"name": "mlp", "features": [4]}},
       "fusion_config": {"out_dim": 4}}


def test_empty_batch_and_zero_width_features():
    with pytest.raises(FusionInputError, match="tensor: an empty batch"):
        fusion.create("tensor", out_dim=4).init(KEY, {"a": jnp.ones((0, 4)), "b": jnp.ones((0, 3))})
    with pytest.raises(FusionInputError, match="modality 'a' has features of width 0"):
        fusion.create("concat", out_dim=4).init(KEY, {"a": jnp.ones((2, 0)), "b": jnp.ones((2, 3))})


def test_a_list_mask_works_and_a_float_mask_is_refused():
    block = fusion.create("concat", out_dim=4)
    feats = {"a": jnp.ones((2, 4)), "b": jnp.ones((2, 3))}
    v = block.init(KEY, feats)
    listed = block.apply(v, feats, {"a": [True, False], "b": [True, True]})
    arrays = block.apply(v, feats, {"a": jnp.array([True, False]), "b": jnp.array([True, True])})
    assert jnp.array_equal(listed, arrays)
    with pytest.raises(FusionInputError, match=r"modality_mask\['a'\] must be \(2,\) bool"):
        block.apply(v, feats, {"a": jnp.array([0.5, 1.0]), "b": jnp.array([True, True])})


def test_string_size_and_zero_classes():
    with pytest.raises(BadSizeError, match="out_dim must be an integer, got '8'"):
        fusion.create("concat", out_dim="8")
    with pytest.raises(ModelConfigError, match="num_classes >= 1"):
        build_classifier(TWO, 0)


def test_integer_inputs_to_the_mlp_encoder():
    model = build_classifier(TWO, 3)
    with pytest.raises(EncoderInputError, match="mlp encoder: expected float features, got int32"):
        model.init(KEY, {"inputs": {"a": jnp.ones((2, 4), jnp.int32), "b": jnp.ones((2, 3))}})


def test_audio_encoder_at_another_sample_rate_than_the_data():
    from mmjax.validation import BatchValidationError, spec_from_config

    info = {"num_classes": 10, "sample_rate": 8000, "modalities": {"audio": {"kind": "audio"}, "image": {"kind": "image"}}}
    model = {"encoders": {"audio": {"name": "audio_cnn", "sample_rate": 16000}, "image": {"name": "cnn"}}}
    with pytest.raises(BatchValidationError, match=r"model.encoders.audio.sample_rate is 16000 .* 8000 Hz"):
        spec_from_config(model, info)
    model["encoders"]["audio"]["sample_rate"] = 8000
    spec_from_config(model, info)
