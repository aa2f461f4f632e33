"""mmjax.data.factory: the batch contract shared by the synthetic sources and the pipeline."""
import ml_collections
import numpy as np
import pytest

import mmjax.data
from mmjax.data import DataConfigError, data_info, make_data, synthetic


def _config(**data):
    return ml_collections.ConfigDict({"data": data})


def test_synthetic_sources_are_served_in_memory():
    c = _config(name="synthetic", num_classes=3, dims={"a": 6, "b": 4}, eval_examples=6)
    assert data_info(c) == synthetic.info(c.data)
    batches = list(make_data(c, "test", global_batch_size=4, seed=0, train=False))
    assert [b["inputs"]["a"].shape for b in batches] == [(4, 6), (4, 6)]
    np.testing.assert_array_equal(batches[1]["weight"], [1, 1, 0, 0])
    info = data_info(_config(name="synthetic_multimodal"))
    assert info["modalities"] == ["image", "text"] and info["tokenizer"].vocab_size == info["vocab_size"]


def test_modalities_keeps_only_those():
    c = _config(name="synthetic_multimodal")
    c.modalities = "image"
    b = next(make_data(c, "train", global_batch_size=2, seed=0, train=True))
    assert list(b["inputs"]) == ["image"] and list(b["modality_mask"]) == ["image"] and b["token_mask"] == {}


def test_bad_data_configs_are_data_config_errors():
    with pytest.raises(DataConfigError, match="config.data.name is not set"):
        data_info(ml_collections.ConfigDict({"data": {"name": ""}}))
    with pytest.raises(DataConfigError, match="num_classes"):
        data_info(_config(name="synthetic_multimodal", num_classes=99))
    with pytest.raises(DataConfigError, match="unknown split"):
        make_data(_config(name="synthetic"), "dev", global_batch_size=2, seed=0, train=True).__next__()


def test_pipeline_eval_batches_get_valid_as_weight_and_no_class_weights(monkeypatch):
    seen = {}

    def fake_make_iterator(data, split, *, global_batch_size, seed, train, start_step):
        seen["class_weights"] = data.class_weights
        yield {"inputs": {"x": np.zeros((3, 2))}, "label": np.zeros(3, np.int32),
               "weight": np.full(3, 2.0, np.float32), "valid": np.array([True, True, False])}

    monkeypatch.setattr(mmjax.data, "make_iterator", fake_make_iterator)
    c = _config(name="some_dataset", class_weights=[1.0, 3.0])
    (b,) = list(make_data(c, "test", global_batch_size=3, seed=0, train=False))
    assert "valid" not in b and seen["class_weights"] is None and c.data.class_weights == [1.0, 3.0]
    np.testing.assert_array_equal(b["weight"], [2.0, 2.0, 0.0])
