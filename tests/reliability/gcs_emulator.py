"""A local GCS server for the tests: ``gcp-storage-emulator`` (the GCS JSON API, in memory) on 127.0.0.1.

It runs through ``_gcs_server.py``, which adds the generation headers real GCS
sends with downloads and the emulator omits (tensorstore needs them).

The ``gcs`` fixture starts it on a free port with one bucket and stops it at
the end of the module. ``gcs.env`` is what a process needs to reach it:
gcsfs (``STORAGE_EMULATOR_HOST``) for every file mmjax writes through
``etils.epath``, and tensorstore (``TENSORSTORE_GCS_HTTP_URL`` with a fake
token), which writes Orbax's arrays. ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false``
skips gcsfs's bucket-layout lookup, an API the emulator does not serve.
"""
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

BUCKET = "bucket"


class Emulator:
    def __init__(self, port: int):
        self.url = f"http://127.0.0.1:{port}"
        self.bucket = BUCKET
        self.env = {"STORAGE_EMULATOR_HOST": self.url, "TENSORSTORE_GCS_HTTP_URL": self.url,
                    "GOOGLE_AUTH_TOKEN_FOR_TESTING": "x", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}

    def fs(self):
        """A gcsfs filesystem on the emulator (not shared with fsspec's instance cache).

        The plain ``gcsfs.core.GCSFileSystem``: the default class first asks a gRPC
        bucket-layout service that the emulator does not have (60 s per call).
        """
        from gcsfs.core import GCSFileSystem
        return GCSFileSystem(endpoint_url=self.url, token="anon", skip_instance_cache=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(emu: Emulator, proc: subprocess.Popen, log, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"gcp-storage-emulator exited with {proc.returncode}: {log.read()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{emu.url}/storage/v1/b/{emu.bucket}", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"gcp-storage-emulator did not answer on {emu.url} within {timeout:.0f} s")


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """A running emulator with bucket ``bucket``; stopped (and its data gone) after the module."""
    pytest.importorskip("gcsfs")
    pytest.importorskip("gcp_storage_emulator")
    emu = Emulator(_free_port())
    port = emu.url.rsplit(":", 1)[1]
    log = open(tmp_path_factory.mktemp("gcs") / "emulator.log", "w+")  # it logs every request
    proc = subprocess.Popen(
        [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "_gcs_server.py"), "start",
         "--host=127.0.0.1", f"--port={port}",
         "--in-memory", f"--default-bucket={emu.bucket}"],
        stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_ready(emu, proc, log)
        yield emu
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


@pytest.fixture
def gcs_env(gcs, monkeypatch):
    """This process pointed at the emulator (environment and a fresh gcsfs instance), undone afterwards."""
    import gcsfs
    for key, value in gcs.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("EPATH_USE_TF", "false")  # what mmjax.train.files would set, undone afterwards
    gcsfs.GCSFileSystem.clear_instance_cache()
    yield gcs
    gcsfs.GCSFileSystem.clear_instance_cache()
