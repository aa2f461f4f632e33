"""The workdir lock on an object store (``gs://...``): a lease of claim objects.

Object stores have no ``flock`` and no ``O_EXCL``. GCS offers generation
preconditions, but the local GCS emulator the tests run against ignores them,
so the lease relies only on what every store (and the emulator) provides:
atomic object writes, deletes and strongly consistent listings.

Scheme (``WORKDIR/run.lease/<token>.json``, one claim object per contender):

1. List the claims. A claim not renewed for longer than its own ``ttl_s`` is
   stale (a run that died without releasing): it is deleted, with a message.
   Any live claim -> :class:`WorkdirBusyError`.
2. Write this run's claim, then list again. If another live claim appeared
   (two runs starting at once) this run deletes its claim, waits a random
   moment and starts over. Of two starters at most one sees only its own
   claim: the one that lists second sees the other's finished write.
3. While held, a thread renews the claim every ``ttl_s / 4`` seconds. Before
   renewing it lists again: if its claim was deleted, or a live claim with a
   later ``acquired`` time exists (a run that took the lease over while this
   one was hung for more than ``ttl_s``), the lease is ``lost``; the loop checks
   ``lost`` before every checkpoint and stops instead of writing.

A run killed with ``kill -9`` leaves its claim; another run can take the
workdir ``ttl_s`` seconds (default ``workdir_lease_s`` = 120) after the last
renewal. Staleness compares the claim's renewal time with this host's clock,
so hosts' clocks must agree to well within ``ttl_s`` (NTP does).
"""
from __future__ import annotations

import json
import os
import random
import socket
import sys
import threading
import time
import uuid
from typing import Any, Callable, Dict, Optional

import fsspec

from mmjax.train import files
from mmjax.train.defaults import WORKDIR_LEASE_S as DEFAULT_TTL_S  # workdir_lease_s's default
from mmjax.train.health import WorkdirBusyError


class WorkdirLease:
    """An exclusive lease on an object-store workdir (same interface as :class:`health.WorkdirLock`).

    Args:
      workdir: the run directory URL (``gs://bucket/run``).
      ttl_s: seconds without renewal after which another run may take the lease over.
      say: where messages about stale leases go (default: stderr).
    """

    DIR = "run.lease"

    def __init__(self, workdir: str, *, ttl_s: float = DEFAULT_TTL_S, say: Optional[Callable[[str], None]] = None):
        if ttl_s <= 0:
            raise ValueError(f"workdir_lease_s must be > 0, got {ttl_s}")
        self.workdir = files.display(workdir)
        self.dir = f"{self.workdir.rstrip('/')}/{self.DIR}"
        self.fs, self._root = fsspec.core.url_to_fs(self.dir)
        self.ttl_s = float(ttl_s)
        self.say = say or (lambda line: print(line, file=sys.stderr, flush=True))
        self.token = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.held = False
        self.lost: Optional[str] = None
        self._acquired = 0.0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # ------------------------------------------------------------------ store
    def _claim_path(self, token: str) -> str:
        return f"{self._root}/{token}.json"

    def _claims(self) -> Dict[str, Dict[str, Any]]:
        """{token: claim} as the store holds them now (fsspec's listing cache is bypassed)."""
        self.fs.invalidate_cache(self._root)
        try:
            names = self.fs.ls(self._root, detail=False)
        except FileNotFoundError:
            return {}
        claims = {}
        for name in names:
            token = os.path.basename(name.rstrip("/"))
            if not token.endswith(".json"):
                continue
            try:
                claims[token[:-5]] = json.loads(self.fs.cat_file(name))
            except FileNotFoundError:
                continue  # deleted since the listing
            except ValueError:
                claims[token[:-5]] = {}  # unreadable: stale
        return claims

    def _stale(self, claim: Dict[str, Any], now: float) -> bool:
        return now - float(claim.get("renewed", 0)) > float(claim.get("ttl_s", self.ttl_s))

    def _write(self) -> None:
        claim = {"pid": os.getpid(), "host": socket.gethostname(), "acquired": self._acquired,
                 "renewed": time.time(), "ttl_s": self.ttl_s,
                 "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self._acquired))}
        self.fs.pipe_file(self._claim_path(self.token), json.dumps(claim).encode())

    def _delete(self, token: str) -> None:
        try:
            self.fs.rm_file(self._claim_path(token))
        except FileNotFoundError:
            pass

    # ------------------------------------------------------------------ lock
    def _busy(self, token: str, claim: Dict[str, Any], now: float) -> WorkdirBusyError:
        age = now - float(claim.get("renewed", 0))
        return WorkdirBusyError(
            f"workdir {self.workdir} is in use by pid {claim.get('pid', '?')} on host {claim.get('host', '?')} "
            f"(since {claim.get('started', '?')}; lease renewed {age:.0f} s ago, free after "
            f"{float(claim.get('ttl_s', self.ttl_s)):.0f} s without renewal); wait for it, or delete "
            f"{self.dir}/{token}.json if that run is gone")

    def _clear_stale(self, claims: Dict[str, Dict[str, Any]], now: float) -> Dict[str, Dict[str, Any]]:
        """Deletes stale claims of other runs; -> the live ones."""
        live = {}
        for token, claim in claims.items():
            if token == self.token:
                continue
            if not self._stale(claim, now):
                live[token] = claim
                continue
            age = now - float(claim.get("renewed", 0))
            self.say(f"taking over the stale lease {self.dir}/{token}.json (pid {claim.get('pid', '?')} on host "
                     f"{claim.get('host', '?')} last renewed it {age:.0f} s ago, more than its "
                     f"{float(claim.get('ttl_s', self.ttl_s)):.0f} s)")
            self._delete(token)
        return live

    def acquire(self) -> "WorkdirLease":
        for attempt in range(5):
            now = time.time()
            live = self._clear_stale(self._claims(), now)
            if live:
                token = min(live)
                raise self._busy(token, live[token], now)
            self._acquired = time.time()
            self._write()
            rivals = [t for t, c in self._claims().items() if t != self.token and not self._stale(c, time.time())]
            if not rivals:
                self.held, self.lost = True, None
                self._stop.clear()
                self._thread = threading.Thread(target=self._renew_loop, name="mmjax-lease", daemon=True)
                self._thread.start()
                return self
            self._delete(self.token)  # another run is starting at the same moment: back off and look again
            time.sleep(random.uniform(0.05, 0.3) * (attempt + 1))
        raise WorkdirBusyError(f"could not take the lease {self.dir} (other runs keep starting on this workdir)")

    def renew(self) -> None:
        """One renewal (the thread calls it every ``ttl_s / 4`` s); sets ``lost`` when another run holds the lease."""
        claims = self._claims()
        if self.token not in claims:
            self.lost = f"the lease {self.dir}/{self.token}.json was removed (taken over by another run?)"
            return
        now = time.time()
        for token, claim in claims.items():
            if token != self.token and not self._stale(claim, now) and \
                    (float(claim.get("acquired", 0)), token) > (self._acquired, self.token):
                self.lost = (f"the lease on {self.workdir} was taken over by pid {claim.get('pid', '?')} on host "
                             f"{claim.get('host', '?')} (this run did not renew it for more than {self.ttl_s:.0f} s)")
                self._delete(self.token)
                return
        self._write()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            try:
                self.renew()
            except Exception as e:  # noqa: BLE001 - a failed renewal is retried; the lease lasts ttl_s
                self.say(f"warning: could not renew the lease {self.dir} ({type(e).__name__}: {e})")
            if self.lost:
                return

    def check(self) -> None:
        """Raises :class:`WorkdirBusyError` when the lease was lost (call before writing a checkpoint)."""
        if self.lost:
            raise WorkdirBusyError(f"workdir {self.workdir}: {self.lost}; this run stops without writing more")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
            self._thread = None
        if self.held and not self.lost:
            self._delete(self.token)
        self.held = False

    def __enter__(self) -> "WorkdirLease":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
