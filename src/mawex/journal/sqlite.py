"""The SQLite journal: one file, shared by the master processes of one machine.

Blocking calls run on one dedicated thread per journal. The exception is a
small append while that thread is idle: handing it to the thread and back costs
more than writing it, so it runs on the event loop. With ``synchronous=normal``
that is every such append (tens of microseconds, no fsync); with ``full``, an
append of at most :data:`INLINE_FSYNC_RECORDS` records while the last fsync'd
append took under :data:`INLINE_FSYNC_SECONDS` (a light load on a fast disk: the
wait for the fsync is short, and under load the batches grow and go back to the
thread, where the fsync overlaps the loop's work). The file is in WAL mode;
each write is one ``BEGIN IMMEDIATE`` transaction, which takes SQLite's single
write lock across processes, so the fence check (the namespace's epoch read
inside the transaction) and the write are atomic for every process that shares
the file. A batch of records is one transaction (group commit).

SQLite copies the WAL back into the database file (a checkpoint) inside the commit
that takes it past 1,000 pages: with appends on the event loop, that commit stalled
the master for milliseconds (4 to 6 ms with ``synchronous=normal``, whose only fsyncs
are the checkpoint's, as it flushes a WAL written without them). With ``normal``, a
background checkpointer, on a thread and connection of its own, copies what has
accumulated after every :data:`CHECKPOINT_APPENDS` appends or
:data:`CHECKPOINT_RECORDS` records (``PASSIVE``: it never blocks the writer), so the
commit's own checkpoint finds little left to do. It cannot do it all: only the
writer's checkpoint, between two commits, lets the next commit start the WAL over.
With ``full`` every commit's pages are already on disk, the commit's checkpoint costs
about a millisecond, and fsyncs of a background checkpoint would compete with the
commits' own: there is none.

Durability follows ``synchronous`` (see :mod:`mawex.journal`): ``full`` fsyncs
each commit, ``normal`` survives a process crash but not a power loss. Lease
times use this machine's :func:`time.time`; a lease whose holder's process has
ended is taken at once (:mod:`mawex.journal.presence`). The file must be on a
local file system: WAL needs shared memory between the processes.

A cancelled call may still complete on the journal thread: a caller that is
cancelled during ``append`` must treat the write as unknown.

A limit of SQLite's file locks: a leader that is paused (SIGSTOP, a debugger)
while it holds the write lock, in the middle of an append, blocks every writer
of the file, a standby's ``acquire`` included, until it resumes (nothing can
take a lock from a live process). It then finishes its transaction, which is
sound (no newer epoch can exist, since nobody could write), and goes on
leading. A leader paused between transactions, or killed, is taken over as
usual. Use PostgreSQL where a stalled host must not stall the cluster.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Final, Literal, TypeVar

from mawex.errors import FencedOut, JournalError, MawexError
from mawex.journal import JournalURL, check_batch, check_namespace, load_queries
from mawex.journal.base import Lease, Member, Record, Snapshot
from mawex.journal.presence import PresenceLocks

_T = TypeVar("_T")
Synchronous = Literal["full", "normal"]

_Q: Final = load_queries("sqlite.sql")
log = logging.getLogger(__name__)
#: How long a writer waits for another process's write lock before failing.
DEFAULT_BUSY_TIMEOUT: Final = 10.0
#: Records deleted per transaction by :meth:`SQLiteJournal.trim`.
TRIM_CHUNK: Final = 20_000
#: An fsync'd append of at most this many records may run on the event loop...
INLINE_FSYNC_RECORDS: Final = 8
#: ...while the last fsync'd append took less than this many seconds.
INLINE_FSYNC_SECONDS: Final = 0.001
#: Appends, or records, after which the background checkpointer runs: a few times
#: between two of the writer's own checkpoints (every 1,000 pages of WAL).
CHECKPOINT_APPENDS: Final = 50
CHECKPOINT_RECORDS: Final = 500


class _Checkpointer:
    """Runs ``PRAGMA wal_checkpoint(PASSIVE)`` on a thread and connection of its own."""

    def __init__(self, path: str, busy_timeout: float) -> None:
        self._path = path
        self._busy_timeout = busy_timeout
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="mawex-sqlite-checkpoint")
        self._conn: sqlite3.Connection | None = None
        self._pending = False
        self._closed = False

    def kick(self) -> None:
        """Checkpoint soon, unless one is already on its way."""
        if not self._pending and not self._closed:
            self._pending = True
            self._executor.submit(self._checkpoint)

    def _checkpoint(self) -> None:
        try:
            if self._conn is None:
                self._conn = sqlite3.connect(
                    self._path, timeout=self._busy_timeout, isolation_level=None
                )
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:  # the writer's own checkpoint still does the work
            log.warning(
                "background checkpoint failed",
                extra={
                    "action": "journal_checkpoint_failed",
                    "path": self._path,
                    "error": str(exc),
                },
            )
        finally:
            self._pending = False

    def close(self) -> None:
        """Let a running checkpoint finish, then close (blocks: not on the event loop)."""
        self._closed = True
        self._executor.submit(self._close_connection)
        self._executor.shutdown(wait=True)

    def _close_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def _fence(epoch: int, current: int) -> None:
    if epoch != current:
        raise FencedOut(f"epoch {epoch} is fenced out: the journal's epoch is {current}")


class SQLiteJournal:
    """A journal in a SQLite file (see the module docstring)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        namespace: str = "default",
        synchronous: Synchronous = "full",
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
    ) -> None:
        if synchronous not in ("full", "normal"):
            raise ValueError(f"synchronous must be 'full' or 'normal', not {synchronous!r}")
        self.path = os.fspath(path)
        self.namespace = check_namespace(namespace)
        self.synchronous: Synchronous = synchronous
        self.busy_timeout = busy_timeout
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        #: Calls handed to the journal thread and not yet over there (the connection
        #: may be used on the loop only when this is 0).
        self._in_thread = 0
        self._in_thread_lock = threading.Lock()
        #: How long the last fsync'd append took (``synchronous=full``): see _run_append.
        self._fsync_seconds = 0.0
        self._checkpointer: _Checkpointer | None = None
        self._presence = PresenceLocks(self.path, self.namespace)
        #: Appends and records since the checkpointer was last asked to run.
        self._unchecked_appends = 0
        self._unchecked_records = 0

    @classmethod
    def from_url(cls, url: JournalURL, *, namespace: str = "default") -> SQLiteJournal:
        """The journal for a parsed ``sqlite://`` URL."""
        assert url.path is not None
        sync = url.options.get("synchronous", "full")
        return cls(
            url.path, namespace=namespace, synchronous="normal" if sync == "normal" else "full"
        )

    def __repr__(self) -> str:
        return f"SQLiteJournal({self.path!r}, namespace={self.namespace!r})"

    # -- plumbing -------------------------------------------------------------

    def _require_open(self) -> ThreadPoolExecutor:
        executor = self._executor
        if executor is None:
            raise JournalError(f"{self!r} is {'closed' if self._closed else 'not open'}")
        return executor

    async def _run(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``fn(connection)`` on the journal thread, wrapping driver errors."""
        executor = self._require_open()
        with self._in_thread_lock:
            self._in_thread += 1
        try:
            work = executor.submit(self._call, fn)
        except BaseException:
            self._thread_done()
            raise
        # counted down on the journal thread itself, also when the caller is cancelled
        work.add_done_callback(self._thread_done)
        return await asyncio.wrap_future(work)

    def _thread_done(self, _: object = None) -> None:
        with self._in_thread_lock:
            self._in_thread -= 1

    async def _run_append(self, fn: Callable[[sqlite3.Connection], _T], records: int) -> _T:
        """Like :meth:`_run`, but on the event loop when the journal thread is idle
        and the append is cheap (see the module docstring)."""
        if self._in_thread == 0 and (
            self.synchronous == "normal"
            or (records <= INLINE_FSYNC_RECORDS and self._fsync_seconds < INLINE_FSYNC_SECONDS)
        ):
            self._require_open()
            return self._call(fn)
        return await self._run(fn)

    def _call(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        conn = self._conn
        if conn is None:
            raise JournalError(f"{self!r} is closed")
        try:
            return fn(conn)
        except MawexError:
            raise
        except sqlite3.Error as e:
            raise JournalError(f"SQLite journal {self.path}: {e}") from e

    @staticmethod
    def _transaction(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``fn`` in a ``BEGIN IMMEDIATE`` transaction: all of it commits or nothing."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return result

    def _write_state(self, conn: sqlite3.Connection, epoch: int) -> tuple[int, int | None]:
        """Fence ``epoch``; return (last offset, snapshot offset)."""
        current, last, snap = conn.execute(_Q["write_state"], {"ns": self.namespace}).fetchone()
        _fence(epoch, current)
        return last, snap

    # -- lifecycle ------------------------------------------------------------

    async def open(self) -> None:
        if self._executor is not None:
            return
        executor = ThreadPoolExecutor(1, thread_name_prefix=f"mawex-sqlite-{self.namespace}")
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._open_sync)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        if self.synchronous == "normal":
            self._checkpointer = _Checkpointer(self.path, self.busy_timeout)
        self._executor = executor
        self._closed = False

    def _open_sync(self) -> None:
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout,
                isolation_level=None,
                cached_statements=64,
                # never used by two threads at once: see _run_append
                check_same_thread=False,
            )
        except sqlite3.Error as e:
            raise JournalError(f"cannot open the SQLite journal {self.path!r}: {e}") from e
        try:
            self._conn = conn
            self._call(self._setup)
        except BaseException:
            self._conn = None
            conn.close()
            raise

    def _setup(self, conn: sqlite3.Connection) -> None:
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        deadline = time.monotonic() + self.busy_timeout
        while True:
            try:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as e:
                # Switching to WAL can report "locked" without waiting on the busy handler.
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        if str(mode).lower() != "wal":
            raise JournalError(f"SQLite journal {self.path}: cannot use WAL mode (got {mode!r})")
        conn.execute(f"PRAGMA synchronous = {self.synchronous.upper()}")
        conn.executescript(_Q["schema"])
        self._transaction(conn, self._migrate)

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        """Bring a file made by an older mawex up to the current schema."""
        columns = {row[1] for row in conn.execute(_Q["records_columns"])}
        if "epoch" not in columns:
            conn.execute(_Q["add_epoch_column"])

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        self._closed = True
        if executor is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._close_sync)
        finally:
            executor.shutdown(wait=False)

    def _close_sync(self) -> None:
        checkpointer, self._checkpointer = self._checkpointer, None
        if checkpointer is not None:
            checkpointer.close()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        self._presence.release_all()

    # -- records --------------------------------------------------------------

    async def append(self, records: Sequence[Record], epoch: int) -> None:
        check_batch(records)
        ns = self.namespace
        rows = [(ns, r.offset, r.topic, r.at, r.body, epoch) for r in records]

        def write(conn: sqlite3.Connection) -> None:
            last, _ = self._write_state(conn, epoch)
            if rows and rows[0][1] != last + 1:
                raise JournalError(f"offset {rows[0][1]} is not the next offset {last + 1}")
            conn.executemany(_Q["insert_record"], rows)

        def transaction(conn: sqlite3.Connection) -> None:
            started = time.perf_counter()
            try:
                self._transaction(conn, write)
            finally:
                if self.synchronous == "full":
                    self._fsync_seconds = time.perf_counter() - started
            self._appended(len(rows))

        await self._run_append(transaction, len(rows))

    def _appended(self, records: int) -> None:
        """Count a committed append; every so often, have the WAL checkpointed."""
        if self._checkpointer is None:  # synchronous=full: the writer's own checkpoints
            return
        self._unchecked_appends += 1
        self._unchecked_records += records
        if (
            self._unchecked_appends >= CHECKPOINT_APPENDS
            or self._unchecked_records >= CHECKPOINT_RECORDS
        ):
            self._unchecked_appends = self._unchecked_records = 0
            self._checkpointer.kick()

    async def read(self, from_offset: int, limit: int) -> list[Record]:
        if limit <= 0:
            self._require_open()
            return []
        rows = await self._run(
            lambda conn: conn.execute(_Q["read"], (self.namespace, from_offset, limit)).fetchall()
        )
        return [Record(*row) for row in rows]

    async def read_topic(self, from_topic: int, limit: int) -> list[Record]:
        if limit <= 0:
            self._require_open()
            return []
        rows = await self._run(
            lambda conn: conn.execute(
                _Q["read_topic"], (self.namespace, from_topic, limit)
            ).fetchall()
        )
        return [Record(*row) for row in rows]

    async def last_offset(self) -> int:
        row = await self._run(
            lambda conn: conn.execute(_Q["last_offset"], {"ns": self.namespace}).fetchone()
        )
        return int(row[0])

    async def save_snapshot(self, snapshot: Snapshot, epoch: int) -> None:
        def write(conn: sqlite3.Connection) -> None:
            last, _ = self._write_state(conn, epoch)
            if snapshot.offset > last:
                raise JournalError(
                    f"snapshot offset {snapshot.offset} is beyond the last offset {last}"
                )
            conn.execute(_Q["save_snapshot"], (self.namespace, snapshot.offset, snapshot.body))

        await self._run(lambda conn: self._transaction(conn, write))

    async def load_snapshot(self) -> Snapshot | None:
        row = await self._run(
            lambda conn: conn.execute(_Q["load_snapshot"], (self.namespace,)).fetchone()
        )
        return None if row is None else Snapshot(row[0], row[1])

    async def trim(self, before_offset: int, keep_topic_from: int, epoch: int) -> int:
        """Delete in transactions of :data:`TRIM_CHUNK` records, so that appends made
        meanwhile wait for one chunk, not for the whole trim."""

        def write(conn: sqlite3.Connection) -> int:
            _, snap = self._write_state(conn, epoch)
            before = min(before_offset, (snap or 0) + 1)
            ns = self.namespace
            cursor = conn.execute(_Q["trim"], (ns, ns, before, keep_topic_from, TRIM_CHUNK))
            return cursor.rowcount

        deleted = 0
        while True:
            chunk = await self._run(lambda conn: self._transaction(conn, write))
            deleted += chunk
            if chunk < TRIM_CHUNK:
                return deleted

    # -- lease ----------------------------------------------------------------

    async def acquire(self, holder: str, ttl: float, url: str | None) -> Lease | None:
        """Also takes a lease that has not lapsed when its holder's process is gone
        (see :mod:`mawex.journal.presence`)."""

        def held(row: tuple[str | None, int, float, str | None] | None) -> bool:
            return (
                row is not None
                and row[0] is not None
                and row[0] != holder
                and row[2] > time.time()
                and not self._presence.is_gone(row[0])
            )

        def write(conn: sqlite3.Connection) -> Lease | None:
            row = conn.execute(_Q["get_lease"], (self.namespace,)).fetchone()
            if held(row):
                return None
            now = time.time()
            lease = Lease(holder, (row[1] if row else 0) + 1, now + ttl, url)
            conn.execute(
                _Q["put_lease"], (self.namespace, holder, lease.epoch, lease.expires_at, url)
            )
            return lease

        def attempt(conn: sqlite3.Connection) -> Lease | None:
            # A standby polls often: look first without the write lock, which the
            # leader needs for every append, and take it only for a lease that looks free.
            if held(conn.execute(_Q["get_lease"], (self.namespace,)).fetchone()):
                return None
            # Before the lease can name this holder, so that its presence is never unknown.
            self._presence.hold(holder)
            lease = self._transaction(conn, write)
            if lease is not None:
                self._presence.sweep()  # the former holder's file among others
            return lease

        return await self._run(attempt)

    async def renew(self, lease: Lease, ttl: float) -> Lease:
        def write(conn: sqlite3.Connection) -> Lease:
            expires_at = time.time() + ttl
            cursor = conn.execute(
                _Q["renew_lease"], (expires_at, self.namespace, lease.epoch, lease.holder)
            )
            if cursor.rowcount != 1:
                raise FencedOut(f"the lease of epoch {lease.epoch} was lost")
            return Lease(lease.holder, lease.epoch, expires_at, lease.url)

        return await self._run(write)

    async def release(self, lease: Lease) -> None:
        await self._run(
            lambda conn: conn.execute(_Q["release_lease"], (self.namespace, lease.epoch))
        )

    async def current_lease(self) -> Lease | None:
        row = await self._run(
            lambda conn: conn.execute(_Q["get_lease"], (self.namespace,)).fetchone()
        )
        if row is None or row[0] is None:
            return None
        return Lease(row[0], row[1], row[2], row[3])

    # -- membership -------------------------------------------------------------

    async def announce(self, member: Member, ttl: float) -> None:
        def write(conn: sqlite3.Connection) -> None:
            now = time.time()
            params = {
                "ns": self.namespace,
                "holder": member.holder,
                "url": member.url,
                "role": member.role,
                "now": now,
                "expires_at": now + ttl,
            }
            conn.execute(_Q["announce"] if ttl > 0 else _Q["withdraw"], params)
            conn.execute(_Q["prune_members"], {"ns": self.namespace, "now": now})

        await self._run(lambda conn: self._transaction(conn, write))

    async def members(self) -> list[Member]:
        def read(conn: sqlite3.Connection) -> list[Member]:
            now = time.time()
            rows = conn.execute(_Q["members"], (self.namespace, now)).fetchall()
            return [Member(h, u, r, seen, exp, max(0.0, now - seen)) for h, u, r, seen, exp in rows]

        return await self._run(read)


__all__ = ["SQLiteJournal"]
