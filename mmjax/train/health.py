"""Run health: the workdir lock, preemption (SIGTERM) handling and test fault hooks.

* :class:`WorkdirLock` keeps two runs from writing the same workdir. The lock
  file ``WORKDIR/run.lock`` holds the owner's pid, host and start time; a lock
  whose pid is dead on this host (a run killed with ``kill -9``) is stale and is
  taken over with a message. On an object store (``gs://`` workdir) there is
  no such file lock: :func:`workdir_lock` returns a
  :class:`mmjax.train.lease.WorkdirLease` instead (claim objects renewed by a
  thread, taken over ``workdir_lease_s`` seconds after a dead run's last renewal).
* :class:`PreemptionGuard` turns SIGTERM (the usual preemption notice) into a
  flag that the loop reads at each step boundary; the loop then saves a
  checkpoint and exits cleanly. With several processes the flag is ignored and
  ``multihost_utils.reached_preemption_sync_point`` decides, so that every
  process stops at the same step.
* The test-only fault hooks (``MMJAX_FAULT``) live in :mod:`mmjax.train.faults`.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
from typing import Any, Callable, Dict, Optional, Tuple

from mmjax import errors
from mmjax.train.faults import FAULT_SLEEP_S, FAULTS, fault  # noqa: F401  (moved to faults; re-exported)


class WorkdirBusyError(errors.RunError):
    """Another live run holds the workdir lock."""


# --------------------------------------------------------------------------- lock
def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live (non-zombie) process on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed but not yet reaped child still answers kill(0)
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return True


class WorkdirLock:
    """An exclusive lock on a run directory (``WORKDIR/run.lock``).

    ``acquire()`` writes ``{"pid", "host", "started"}`` to a temporary file and
    hard-links it to the lock name (atomic on local and NFS filesystems, and the
    lock is never seen empty, so no second run can take an empty lock over). If it
    exists and names a live process, or a process on another host (whose
    liveness cannot be checked from here), :class:`WorkdirBusyError` is raised;
    if the pid is dead on this host the lock is stale and is replaced.

    Args:
      workdir: the run directory.
      say: where messages about stale locks go (default: stderr).
    """

    NAME = "run.lock"

    def __init__(self, workdir: str, say: Optional[Callable[[str], None]] = None):
        self.path = os.path.join(os.path.abspath(workdir), self.NAME)
        self.say = say or (lambda line: print(line, file=sys.stderr, flush=True))
        self.held = False
        self.lost: Optional[str] = None  # a local lock cannot be taken over while its pid lives

    def check(self) -> None:
        """Nothing to check for a local lock (same interface as the object-store lease)."""

    def _read(self) -> Dict[str, Any]:
        """The lock's content as a dict with an int ``pid`` ({} when unreadable, not JSON or not a lock)."""
        try:
            with open(self.path, encoding="utf-8") as f:
                owner = json.load(f)
        except (OSError, ValueError):
            return {}
        pid = owner.get("pid") if isinstance(owner, dict) else None
        if not isinstance(pid, int) or isinstance(pid, bool) or not 0 < pid < 2 ** 31:
            return {}
        return owner

    def _create(self, host: str) -> bool:
        """Creates the lock with its content in one step (never seen empty); False when it exists."""
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"pid": os.getpid(), "host": host, "started": time.strftime("%Y-%m-%d %H:%M:%S")}, f)
        try:
            os.link(tmp, self.path)  # atomic, and fails when the lock exists (local disks and NFS)
            return True
        except FileExistsError:
            return False
        finally:
            os.remove(tmp)

    def acquire(self) -> "WorkdirLock":
        host = socket.gethostname()
        for _ in range(3):
            if self._create(host):
                self.held = True
                return self
            owner = self._read()
            pid, owner_host = int(owner.get("pid", -1)), owner.get("host")
            if owner and owner_host == host and pid == os.getpid():
                self.held = True
                return self
            if owner and (owner_host != host or pid_alive(pid)):
                raise WorkdirBusyError(
                    f"workdir {os.path.dirname(self.path)} is in use by pid {pid} on host {owner_host} "
                    f"(since {owner.get('started', '?')}); wait for it, or delete {self.path} if that run is gone"
                ) from None
            # Dead owner on this host, or a lock file that is not a lock (damaged, edited).
            what = f"pid {pid} is not running" if owner else "the lock file is empty, unreadable or not a lock"
            self.say(f"removing stale lock {self.path} ({what})")
            stale = f"{self.path}.stale-{os.getpid()}"
            try:
                os.replace(self.path, stale)
                os.remove(stale)
            except FileNotFoundError:
                pass  # another starter cleared it first; try again
        raise WorkdirBusyError(f"could not take the lock {self.path} (other runs keep starting on this workdir)")

    def release(self) -> None:
        if not self.held:
            return
        owner = self._read()
        if owner.get("pid") == os.getpid():
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass
        self.held = False

    def __enter__(self) -> "WorkdirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def workdir_lock(workdir: str, say: Optional[Callable[[str], None]] = None, lease_s: Optional[float] = None):
    """The lock for ``workdir``: :class:`WorkdirLock` for a local directory, a lease on an object store.

    ``lease_s``: seconds an object-store lease lives without renewal (default
    :data:`mmjax.train.lease.DEFAULT_TTL_S`).
    """
    from mmjax.train import files
    if not files.is_remote(workdir):
        return WorkdirLock(workdir, say=say)
    from mmjax.train.lease import DEFAULT_TTL_S, WorkdirLease
    return WorkdirLease(workdir, ttl_s=DEFAULT_TTL_S if lease_s is None else float(lease_s), say=say)


# --------------------------------------------------------------------------- preemption
class PreemptionGuard:
    """SIGTERM or Ctrl-C (SIGINT) -> a flag the loop polls at step boundaries (``requested(step)``).

    A second Ctrl-C stops at once (``KeyboardInterrupt``), without the checkpoint.

    Single process: the signal handler sets the flag (installing a handler is
    only possible on the main thread; elsewhere SIGTERM keeps its default).
    Multi-process: every process must stop at the same step, so the decision is
    ``jax.experimental.multihost_utils.reached_preemption_sync_point(step)``
    (available when ``jax.distributed.initialize`` started the preemption
    service); the local flag is not used there, because a signal that reaches
    one process but not the others would make them disagree. No Python handler
    is installed then: it would replace the runtime's own SIGTERM handler, the
    one that tells the other processes.
    """

    def __init__(self, signals: Tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)):
        self.signals = signals
        self.flag = threading.Event()
        self.signal_name: Optional[str] = None
        self._previous: Dict[int, Any] = {}
        self._multihost = False
        self.stop_now = False

    def _handler(self, signum, frame):  # noqa: ARG002
        if signum == signal.SIGINT:
            if self.flag.is_set():
                # Raised wherever the main thread is; where that swallows it (a gc callback
                # during compilation: "Exception ignored"), requested() raises it again.
                self.stop_now = True
                raise KeyboardInterrupt
            sys.stderr.write("\ninterrupted: saving a checkpoint after this step (Ctrl-C again to stop without it)\n")
        self.signal_name = signal.Signals(signum).name
        self.flag.set()

    def __enter__(self) -> "PreemptionGuard":
        import jax
        self._multihost = jax.process_count() > 1
        if not self._multihost and threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handler)
        global _ACTIVE_GUARD
        _ACTIVE_GUARD = self
        return self

    def __exit__(self, *exc) -> None:
        global _ACTIVE_GUARD
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous.clear()
        _ACTIVE_GUARD = None

    def requested(self, step: int) -> bool:
        """Whether to save and stop after ``step`` (call at the same steps on every process)."""
        if self.stop_now:
            raise KeyboardInterrupt  # a second Ctrl-C: stop without the checkpoint
        if not self._multihost:
            return self.flag.is_set()
        try:
            from jax.experimental import multihost_utils
            return bool(multihost_utils.reached_preemption_sync_point(step))
        except (RuntimeError, AttributeError, ValueError):
            # No preemption service (not started by jax.distributed.initialize).
            return False


_ACTIVE_GUARD: Optional[PreemptionGuard] = None


def active_guard() -> Optional[PreemptionGuard]:
    """The guard of the run in progress in this process (a fault's sleep ends when it is set), or None."""
    return _ACTIVE_GUARD


# --------------------------------------------------------------------------- fault hooks
def install_checkpoint_fault() -> None:
    """Nothing to install: ``fault("before_commit", step)`` runs in every save.

    The point is the finalisation of the checkpoint's checksums item
    (:class:`mmjax.train.checkpoint_items.ChecksumsHandler`), after the whole
    step is written and before Orbax commits it. Kept so that callers of the
    earlier hook keep working.
    """
