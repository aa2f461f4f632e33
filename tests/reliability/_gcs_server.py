"""Runs gcp-storage-emulator (same arguments as its ``start`` command), sending the generation headers.

Real GCS answers every object download with ``x-goog-generation`` and
``x-goog-metageneration``; the emulator leaves them out. tensorstore (which
writes Orbax's arrays) takes the generation of the OCDBT manifest it read
from that header and makes its next manifest write conditional on it; without
the header the write fails with "Malformed StorageGeneration". This launcher
adds the two headers from the emulator's own object record and changes
nothing else: the emulator stores and serves every object.

The server exits when the process that started it is gone (a test run killed
before its fixture could stop it leaves no server behind).
"""
import os
import sys
import threading
import time
from http import HTTPStatus

from gcp_storage_emulator import __main__ as emulator_cli
from gcp_storage_emulator.handlers import objects

_download = objects.download


def download(request, response, storage, *args, **kwargs):
    _download(request, response, storage, *args, **kwargs)
    if response.status in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT):
        obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
        response["x-goog-generation"] = str(obj["generation"])
        response["x-goog-metageneration"] = str(obj["metageneration"])


objects.download = download  # objects.get(alt=media) calls it by this name

def _exit_with_parent() -> None:
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


if __name__ == "__main__":
    threading.Thread(target=_exit_with_parent, daemon=True).start()
    sys.exit(emulator_cli.main(sys.argv[1:]))
