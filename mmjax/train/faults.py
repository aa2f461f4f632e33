"""Test-only fault injection: ``MMJAX_FAULT="point@step:action,..."``.

The reliability tests make a real run misbehave at a named point (sleep there so
the test can kill the process inside the window, send itself SIGTERM, crash,
poison a batch, report a checkpoint unreadable). The loop does not call these
hooks step by step: it wraps its step function, batch iterator, eval and save
once with :func:`after_each_call`, :func:`poison_batches`, :func:`before` and
:func:`after`, and each returns what it was given when ``MMJAX_FAULT`` names
no such point, so a normal run's hot loop holds no fault code at all.

Points: ``batch`` (action ``nan``), ``after_step``, ``during_eval``,
``after_save`` (in the loop), ``before_commit`` (the checksums item's
finalisation, :mod:`mmjax.train.checkpoint_items`) and ``restore`` (action
``damaged``, :mod:`mmjax.train.checkpoint_restore`).
"""
from __future__ import annotations

import functools
import os
import signal
import sys
import time
from typing import Any, Callable, Dict, Iterable, Iterator, Optional, Tuple

import numpy as np

FAULT_SLEEP_S = 600.0


def _parse_faults(text: str) -> Dict[Tuple[str, Optional[int]], str]:
    faults: Dict[Tuple[str, Optional[int]], str] = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        where, _, action = item.partition(":")
        point, _, step = where.partition("@")
        faults[(point, int(step) if step else None)] = action or "sleep"
    return faults


# Read once: the variable is set by the test that starts the run's process.
FAULTS = _parse_faults(os.environ.get("MMJAX_FAULT", ""))


def armed(point: str) -> bool:
    """Whether ``MMJAX_FAULT`` names ``point`` at any step."""
    return any(p == point for p, _ in FAULTS)


def _sleep_until_stopped() -> None:
    from mmjax.train import health  # the active preemption guard ends the sleep on SIGTERM
    end = time.monotonic() + FAULT_SLEEP_S
    while time.monotonic() < end:
        guard = health.active_guard()
        if guard is not None and guard.flag.is_set():
            break
        time.sleep(0.05)


def fault(point: str, step: Optional[int] = None) -> Optional[str]:
    """Runs the action configured for ``point`` (at ``step``); returns it (None when none is).

    Actions: ``sleep`` (announce, then wait up to 10 min or until SIGTERM),
    ``sigterm`` (send SIGTERM to this process), ``exit`` (``os._exit(3)``, a crash
    with no clean-up); any other action (``nan`` at ``batch``, ``damaged`` at
    ``restore``) is returned for the caller to apply. The announcement is a line
    on stderr and, when ``MMJAX_FAULT_MARKER`` is set, that file holding the point's name.
    """
    if not FAULTS:
        return None
    action = FAULTS.get((point, step)) or FAULTS.get((point, None))
    if action is None:
        return None
    label = f"{point}@{step}" if step is not None else point
    print(f"MMJAX_FAULT {label}:{action}", file=sys.stderr, flush=True)
    marker = os.environ.get("MMJAX_FAULT_MARKER")
    if marker:
        with open(marker + ".tmp", "w", encoding="utf-8") as f:
            f.write(label)
        os.replace(marker + ".tmp", marker)
    if action == "sleep":
        _sleep_until_stopped()
    elif action == "sigterm":
        os.kill(os.getpid(), signal.SIGTERM)
    elif action == "exit":
        os._exit(3)
    return action


def poison(batch: Dict[str, Any]) -> Dict[str, Any]:
    """A copy of ``batch`` whose first float input (in name order) is all NaN."""
    inputs = dict(batch["inputs"])
    for m in sorted(inputs):
        x = np.array(inputs[m])
        if x.dtype.kind == "f":
            x[...] = np.nan
            inputs[m] = x
            break
    return dict(batch, inputs=inputs)


def poison_batches(batches: Iterable[Dict[str, Any]], start: int) -> Iterable[Dict[str, Any]]:
    """``batches`` (the one for step ``start + 1`` first) with ``batch@N:nan`` applied to step N's."""
    if not armed("batch"):
        return batches

    def poisoned() -> Iterator[Dict[str, Any]]:
        for k, batch in enumerate(batches):
            yield poison(batch) if fault("batch", start + k + 1) == "nan" else batch
    return poisoned()


def after_each_call(fn: Callable, point: str, start: int) -> Callable:
    """``fn`` followed by ``fault(point, n)``, n = start + 1, start + 2, ... per call (the step it made)."""
    if not armed(point):
        return fn
    calls = [start]

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        out = fn(*args, **kwargs)
        calls[0] += 1
        fault(point, calls[0])
        return out
    return wrapped


def before(fn: Callable, point: str) -> Callable:
    """``fault(point, step)`` and then ``fn(step, ...)``."""
    if not armed(point):
        return fn

    @functools.wraps(fn)
    def wrapped(step, *args, **kwargs):
        fault(point, step)
        return fn(step, *args, **kwargs)
    return wrapped


def after(fn: Callable, point: str) -> Callable:
    """``fn(step, ...)`` and then ``fault(point, step)``."""
    if not armed(point):
        return fn

    @functools.wraps(fn)
    def wrapped(step, *args, **kwargs):
        out = fn(step, *args, **kwargs)
        fault(point, step)
        return out
    return wrapped
