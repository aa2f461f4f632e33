"""The data tests' av_digits/tiny config (the build itself is ``tiny_dir`` in tests/conftest.py)."""


import pytest


@pytest.fixture
def tiny_config(tiny_dir):
    from mmjax.data.config import default_config

    cfg = default_config("av_digits/tiny")
    cfg.data_dir = tiny_dir
    cfg.prefetch = 0
    return cfg
