"""One line for a full or read-only disk: the echoes of that fault from background threads are held back.

When a checkpoint write fails for lack of space, Orbax logs the error from each of its save
threads (a traceback each), tensorstore's callbacks then find their asyncio loop closed, and the
writes left unfinished complain again at exit: 13 to 191 tracebacks for one fault, before the
command's own error. While a command runs, :class:`HeldBack` keeps aside the log records that
carry a storage fault and the "Event loop is closed" reports. If the command ends with the
:class:`mmjax.train.files.StorageError` line they are dropped (and so is what unfinished writes
report at exit); otherwise they are printed when it ends, so nothing is lost.
"""
from __future__ import annotations

import logging
import sys
from typing import Any, List

from mmjax.train import files


def _is_echo(exc: BaseException) -> bool:
    """A report that follows a storage fault: the fault itself, or a write callback finding its loop closed."""
    return files.storage_fault(exc) is not None or (isinstance(exc, RuntimeError) and "Event loop is closed" in str(exc))


class HeldBack(logging.Filter):
    """Context manager: holds storage-fault log records and unraisable reports until :meth:`finish`."""

    def __init__(self):
        super().__init__()
        self.records: List[logging.LogRecord] = []
        self.unraisable: List[Any] = []
        self.dropping = False
        self._finished = False
        self._targets: List[Any] = []
        self._previous_hook = None

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        try:
            text = record.getMessage()
        except Exception:  # a record whose arguments do not fit: logging reports that itself
            return True
        if (exc is not None and _is_echo(exc)) or files.storage_fault(Exception(text)) is not None:
            if not self.dropping:
                self.records.append(record)
            return False
        return True

    def _hook(self, report) -> None:
        if self.dropping:
            return  # after the one line: unfinished writes to the full disk, at exit
        if report.exc_value is not None and _is_echo(report.exc_value):
            self.unraisable.append(report)
        else:
            self._previous_hook(report)

    def __enter__(self) -> "HeldBack":
        root = logging.getLogger()
        # A logger's filter sees only records logged to it, a handler's those propagated to it as well; the
        # root's handlers may come later (a module calling basicConfig), so the loggers that report are named.
        loggers = [logging.getLogger(name) for name in ("absl", "asyncio", "concurrent.futures")]
        self._targets = [*loggers, root, *root.handlers, *filter(None, [logging.lastResort])]
        for t in self._targets:
            t.addFilter(self)
        self._previous_hook, sys.unraisablehook = sys.unraisablehook, self._hook
        return self

    def finish(self, storage_failed: bool) -> None:
        """Drops what was held when the command ended in a storage fault's line; prints it otherwise."""
        self._finished = True
        if storage_failed:
            # Filters and hook stay until the process exits: background saves fail after the main thread did.
            self.dropping = True
            self.records.clear()
            self.unraisable.clear()
            return
        for t in self._targets:
            t.removeFilter(self)
        sys.unraisablehook = self._previous_hook
        for record in self.records:
            logging.getLogger(record.name).handle(record)
        for report in self.unraisable:
            self._previous_hook(report)

    def __exit__(self, *exc) -> None:
        if not self._finished:
            self.finish(storage_failed=False)
