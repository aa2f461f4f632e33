"""The run-config schema (mmjax.train.defaults) and the accessor that reads through it."""
import pathlib
import re

import ml_collections
import pytest

from mmjax.train import defaults
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
    for key in sorted(keys):
        defaults.default(key)  # KeyError names a key read without a default
