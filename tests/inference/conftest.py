"""One tiny trained run per test session, shared by the inference tests (see _tiny_run.py)."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import _tiny_run  # noqa: E402


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("inference") / "run")
    _tiny_run.train(wd)
    return wd


@pytest.fixture(scope="session")
def loaded(run_dir):
    import mmjax

    return mmjax.load(run_dir)
