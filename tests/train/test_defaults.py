"""The run-config schema (mmjax.train.defaults) and the accessor that reads through it."""
import pathlib
import re

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from experiments.configs import base
from mmjax.train import defaults, optim
from mmjax.train.config_access import copy_with, setting


def test_setting_reads_the_config_and_falls_back_to_the_schema():
    c = ml_collections.ConfigDict({"seed": 3, "train": {"nan_policy": "stop"}, "checkpoint": None})
    assert setting(c, "seed") == 3 and setting(c, "train.nan_policy") == "stop"
    assert setting(c, "train.grad_accum_steps") == 1  # key missing from a present section
    assert setting(c, "checkpoint.keep") == 2          # section holding None
    assert setting({}, "eval_split") == "validation" and setting(None, "loss.name") == "softmax_xent"
    assert setting({"tensorboard": False}, "tensorboard") is False  # a false value is the config's, not absent
    with pytest.raises(KeyError, match="'train.nan_polcy' has no default"):
        setting(c, "train.nan_polcy")


def test_sections_come_back_as_copies():
    mesh = setting({}, "parallel.mesh")
    mesh["data"] = 8
    assert setting({}, "parallel.mesh") == {"data": -1, "fsdp": 1, "tensor": 1}


def test_copy_with_leaves_the_config_as_it_was_also_when_locked():
    c = ml_collections.ConfigDict({"seed": 1})
    c.lock()
    out = copy_with(c, test_split="", seed=2)
    assert (out.seed, out.test_split) == (2, "") and c.seed == 1 and "test_split" not in c
    d = {"checkpoint": {"keep": 1}}
    out = copy_with(d, seed=2)
    out["checkpoint"]["keep"] = 5
    assert d == {"checkpoint": {"keep": 1}}


def test_every_key_the_library_reads_through_setting_has_a_default():
    root = pathlib.Path(defaults.__file__).parents[1]
    keys = set()
    for path in root.rglob("*.py"):
        text = path.read_text()
        if not re.search(r"from mmjax\.train\.config_access import .*\bsetting\b", text):
            continue  # another module's own ``setting``
        keys.update(re.findall(r"""\bsetting\([^,()]+(?:\([^()]*\))?, ["']([\w.]+)["']\)""", text))
    assert {"seed", "eval_split", "train.nan_policy", "checkpoint.best_metric"} <= keys  # the scan finds them
    # optim.py reads every optim key base.py sets (and sgd's momentum) through setting ...
    assert {f"optim.{k}" for k in base.get_config().optim} | {"optim.momentum"} <= keys
    # The tasks read their eval options through it too.
    assert {f"eval.{k}" for k in ("ks", "prompts", "probe_examples", "probe_l2", "beam_size", "alpha",
                                  "num_samples")} <= keys
    for key in sorted(keys):
        defaults.default(key)  # KeyError names a key read without a default
    # ... and writes no fallback of its own (``cfg.get("weight_decay", 0.0)``).
    assert not re.search(r"""\.get\(\s*["']\w+["']\s*,""", pathlib.Path(optim.__file__).read_text())


def _update(optim_cfg, grad, w=1.0):
    params = {"w": jnp.full((2, 2), w)}
    tx = optim.make_optimizer(optim_cfg, params, 100)
    updates, _ = tx.update({"w": jnp.full((2, 2), grad)}, tx.init(params), params)
    return np.asarray(updates["w"])


def test_an_optim_section_without_the_keys_trains_as_base_py_does():
    # Warmup over 50 steps to 1e-3, cosine to 0 at total_steps.
    lr = optim.make_schedule({}, 1000)
    np.testing.assert_allclose([lr(0), lr(25), lr(50), lr(1000)], [0.0, 5e-4, 1e-3, 0.0], atol=1e-9)
    # AdamW with weight decay 1e-4: a zero gradient still shrinks a matrix by lr * 1e-4 * w.
    np.testing.assert_allclose(_update({"schedule": "constant", "warmup_steps": 0, "learning_rate": 1.0}, 0.0),
                               -1e-4, rtol=1e-5)
    # Clipping at global norm 1: the (2, 2) gradient of 5s (norm 10) steps sgd by 0.5 per entry;
    # an explicit None (as 0) turns clipping off.
    sgd = {"name": "sgd", "schedule": "constant", "warmup_steps": 0, "learning_rate": 1.0}
    np.testing.assert_allclose(_update(sgd, 5.0), -0.5, rtol=1e-5)
    np.testing.assert_allclose(_update(dict(sgd, clip_norm=None), 5.0), -5.0, rtol=1e-5)
    np.testing.assert_allclose(_update(dict(sgd, clip_norm=0), 5.0), -5.0, rtol=1e-5)
    assert optim.options(None) == optim.options(ml_collections.ConfigDict({"b1": None}))
