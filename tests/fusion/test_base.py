"""The fusion input contract (mmjax.fusion.base.prepare) and the block registry."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mmjax.fusion as F
from mmjax.fusion.base import FusionInputError, masked_mean, prepare
from mmjax.types import Encoded


def feats(**shapes):
    return {k: jnp.ones(v) for k, v in shapes.items()}


@pytest.mark.parametrize(
    "features,mask,match",
    [
        (feats(a=(2, 3), b=(3, 4)), None, "batch size"),
        (feats(a=(2, 3), b=(2, 1, 2, 4)), None, r"'b'.*rank 4"),
        (feats(a=(2,), b=(2, 4)), None, r"'a'.*rank 1"),
        ({"a": jnp.ones((2, 5), jnp.int32), "b": jnp.ones((2, 4))}, None, r"'a'.*floating point"),
        (feats(a=(2, 3), b=(2, 4)), {"c": jnp.ones(2, bool)}, r"\['c'\]"),
        (feats(a=(2, 3), b=(2, 4)), {"a": jnp.ones((2, 1), bool)}, r"modality_mask\['a'\].*\(2,\)"),
        (feats(a=(2, 3)), None, "at least 2 modalities"),
        ({"a": [1.0, 2.0], "b": jnp.ones((2, 4))}, None, r"'a'.*array or Encoded"),
        ([jnp.ones((2, 3))], None, "mapping"),
    ],
    ids=["batch", "rank4", "rank1", "integer", "unknown_mask_key", "mask_shape", "one_modality", "list", "not_mapping"],
)
def test_prepare_rejects_bad_input(features, mask, match):
    with pytest.raises(FusionInputError, match=match) as info:
        prepare(features, mask, block="demo")
    assert isinstance(info.value, ValueError)
    assert str(info.value).startswith("demo:")


def test_blocks_raise_the_same_errors_before_compiling():
    for name in ["sum", "tensor", "low_rank", "bilinear", "late"]:
        block = F.create(name, out_dim=2)
        with pytest.raises(FusionInputError, match="batch size"):
            jax.eval_shape(block.init, jax.random.key(0), feats(a=(2, 3), b=(3, 4)))


def test_prepare_sorts_zeroes_and_pools():
    x_b = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)
    tm = np.array([[True, True, False], [True, False, False]])
    enc = Encoded(pooled=jnp.full((2, 2), 7.0), tokens=jnp.asarray(x_b), mask=jnp.asarray(tm))
    a = np.array([[1.0, np.nan], [3.0, 4.0]], np.float32)
    inputs = prepare({"b": enc, "a": jnp.asarray(a), "c": jnp.asarray(x_b)},
                     {"a": jnp.array([False, True])}, block="demo")
    assert inputs.names == ("a", "b", "c") and inputs.batch_size == 2
    np.testing.assert_array_equal(inputs.pooled["a"], [[0, 0], [3, 4]])  # NaN in a masked row is gone
    np.testing.assert_array_equal(inputs.pooled["b"], 7.0)  # Encoded keeps its own pooled
    np.testing.assert_allclose(inputs.pooled["c"], x_b.mean(1))  # plain tokens: mean over all
    np.testing.assert_array_equal(inputs.tokens["b"][0, 2], 0.0)  # padding zeroed
    np.testing.assert_array_equal(inputs.token_mask["b"], tm)
    np.testing.assert_array_equal(inputs.present_matrix(), [[0, 1, 1], [1, 1, 1]])
    assert inputs.dims() == {"a": 2, "b": 2, "c": 2}


def test_masked_mean_matches_numpy_and_handles_empty_rows():
    x = np.random.default_rng(0).normal(size=(3, 4, 2)).astype(np.float32)
    m = np.array([[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], bool)
    got = np.asarray(masked_mean(jnp.asarray(x), jnp.asarray(m)))
    np.testing.assert_allclose(got[0], x[0, :2].mean(0), rtol=1e-6)
    np.testing.assert_array_equal(got[1], 0.0)
    np.testing.assert_allclose(got[2], x[2].mean(0), rtol=1e-6)


def test_registry_suggests_the_closest_name():
    with pytest.raises(KeyError, match="tensor") as info:
        F.create("tensr", out_dim=2)
    assert "Did you mean 'tensor'" in str(info.value)
    assert isinstance(info.value, ValueError)
    with pytest.raises(ValueError, match="low_rank"):
        F.create("lowrank", out_dim=2)


def test_registry_lists_the_pooled_blocks_and_reports_bad_config():
    assert {"concat", "sum", "weighted", "gated", "film", "tensor", "low_rank", "bilinear", "late"} <= set(F.names())
    with pytest.raises(TypeError, match="'low_rank'.*bad config"):
        F.create("low_rank", out_dim=2, rnak=3)


def test_size_options_are_checked_with_their_name():
    from mmjax.registry import BadSizeError, check_sizes
    from mmjax.fusion.attention import BottleneckFusion

    with pytest.raises(BadSizeError, match=r"^fusion block 'low_rank': out_dim must be >= 1, got 0$"):
        F.create("low_rank", out_dim=0)
    # Layer counts and indices may be 0; sizes may not; None (Optional) and bools are left alone.
    check_sizes(BottleneckFusion, {"out_dim": 4, "num_layers": 0, "fusion_layer": 0, "mlp_dim": None}, "x.")
    with pytest.raises(BadSizeError, match=r"^x.num_layers must be >= 0, got -1$"):
        check_sizes(BottleneckFusion, {"num_layers": -1}, "x.")
    with pytest.raises(BadSizeError, match=r"^x.num_bottlenecks must be >= 1, got 0$"):
        check_sizes(BottleneckFusion, {"num_bottlenecks": 0}, "x.")
    assert F.create("low_rank", out_dim=3, rank=2).rank == 2
