"""Whether a lease holder still runs, for masters that share one machine.

A master that takes the SQLite journal's lease first locks a file of its own
(``flock``, exclusive) in a directory beside the journal file, and holds that
lock until it closes the journal. The kernel drops the lock the moment the
process ends, however it ends (``kill -9`` included). A standby that finds the
lease held and not lapsed tries the holder's lock: if it gets it, the holder's
process has ended (or closed its journal), and the lease is taken at once
instead of after its TTL. A master that takes the lease removes every file
left unlocked.

Only a lock that is free proves anything. A missing file, a file that cannot be
opened, or a lock held (the holder runs, or is paused: SIGSTOP keeps its locks)
all say "maybe alive", and the lease lapses as it always did. Fencing does not
rely on any of this: a lease taken too early still has a newer epoch.

The PostgreSQL and Redis journals hold their presence on the server instead; all
three space out their attempts after a failure with :class:`PresenceRetry`.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Final

log = logging.getLogger(__name__)

#: The directory beside the journal file: ``<journal file>`` + this.
DIRECTORY_SUFFIX: Final = "-masters"
#: How long :meth:`PresenceLocks.hold` waits for a lock file another process holds.
OWN_LOCK_WAIT: Final = 0.1
#: Seconds between attempts to hold a presence after one failed.
RETRY_S: Final = 10.0


class PresenceLocks:
    """The lock files of the masters of one journal namespace (see the module docstring).

    Methods block (file system calls): run them off the event loop.
    """

    def __init__(self, journal_path: str, namespace: str) -> None:
        self.directory = journal_path + DIRECTORY_SUFFIX
        self.namespace = namespace
        #: holder -> the open, locked file of that holder in this process
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()
        self._retry = PresenceRetry()

    def path(self, holder: str) -> str:
        """The lock file of ``holder`` (hashed: holders are free-form strings)."""
        digest = hashlib.sha256(f"{self.namespace}\0{holder}".encode()).hexdigest()[:32]
        return os.path.join(self.directory, f"{digest}.lock")

    def hold(self, holder: str) -> bool:
        """Lock ``holder``'s file for this process (kept until :meth:`release_all`).

        Returns False if it cannot (logged, and not tried again for :data:`RETRY_S`
        seconds): the lease then only lapses.
        """
        with self._lock:
            if holder in self._held:
                return True
            if not self._retry.due():
                return False
            path = self.path(holder)
            try:
                os.makedirs(self.directory, exist_ok=True)
                fd = _lock_own(path)
            except OSError as exc:
                fd, error = None, f"{path}: {exc}"
            else:
                error = f"{path}: another process holds it"
            if fd is None:
                self._retry.failed(holder, error)
                return False
            self._retry.succeeded()
            self._held[holder] = fd
            return True

    def is_gone(self, holder: str) -> bool:
        """True if ``holder`` held its lock here and its process no longer does."""
        return holder not in self._held and self._check(self.path(holder), remove=False)

    def sweep(self) -> None:
        """Remove the files of every gone holder (after taking the lease from one, say).
        This process's own files stay: their locks, held, refuse the look."""
        try:
            names = os.listdir(self.directory)
        except OSError:
            return
        for name in names:
            if name.endswith(".lock"):
                self._check(os.path.join(self.directory, name), remove=True)

    def _check(self, path: str, *, remove: bool) -> bool:
        """Whether the file at ``path`` exists unlocked (removing it if ``remove``)."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # never O_CREAT: see _lock_own
        except OSError:
            return False
        try:
            if not _try_lock(fd) or not _same_file(fd, path):
                return False  # alive, or removed meanwhile by whoever found it gone first
            if remove:
                os.unlink(path)
            return True
        except OSError:
            return False
        finally:
            os.close(fd)  # drops the lock taken to look

    def release_all(self) -> None:
        """Stop holding this process's locks (when the journal closes). The files stay
        (a standby may take the lease at once); the next master to take the lease
        removes them."""
        with self._lock:
            held, self._held = self._held, {}
        for fd in held.values():
            os.close(fd)


class PresenceRetry:
    """When to try again to hold a presence that could not be held, and one warning
    per run of failures (a standby asks every poll; it must not retry or log as often)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._next_at = 0.0
        self._failing = False

    def due(self) -> bool:
        """Whether an attempt may be made now."""
        return self._clock() >= self._next_at

    def failed(self, holder: str, error: str) -> None:
        """An attempt failed: the lease goes on without presence until one succeeds."""
        self._next_at = self._clock() + RETRY_S
        if not self._failing:
            self._failing = True
            log.warning(
                "cannot hold a presence lock: a standby will take over only once the lease "
                "lapses (retried every %g s)",
                RETRY_S,
                extra={"action": "presence_lock_failed", "holder": holder, "error": error},
            )

    def succeeded(self) -> None:
        """An attempt succeeded."""
        self._next_at = 0.0
        if self._failing:
            self._failing = False
            log.info("presence lock held again", extra={"action": "presence_lock_held"})


def _lock_own(path: str) -> int | None:
    """Open (creating) and lock ``path``; None if another process holds it throughout
    :data:`OWN_LOCK_WAIT` seconds (the same holder name used by two processes)."""
    deadline = time.monotonic() + OWN_LOCK_WAIT
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            locked = _try_lock(fd)
            # A standby that found a former process of this holder gone holds the
            # lock for a moment to remove the file: then the file is a new one.
            if locked and _same_file(fd, path):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        if time.monotonic() > deadline:
            return None
        time.sleep(0.001)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _same_file(fd: int, path: str) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


__all__ = ["DIRECTORY_SUFFIX", "PresenceLocks", "PresenceRetry"]
