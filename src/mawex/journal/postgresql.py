"""The PostgreSQL journal (asyncpg): the production store for masters on several machines.

Each namespace has one row in ``mawex_lease``. Every write transaction first
locks that row (``SELECT epoch ... FOR UPDATE``) and compares the epoch with the
caller's, so the fence check and the write commit together; ``acquire`` updates
the same row, so it waits for an in-flight append and a new leader sees every
record its predecessor committed. An append is one statement in a transaction of
its own (lock, checks and ``INSERT ... SELECT FROM unnest(...)``): one round trip
whatever the batch size. Pooled connections are handed back without asyncpg's
reset query (another round trip): the journal keeps no session state.

Lease expiry is on the database server's clock (``clock_timestamp()``), so
masters on machines with skewed clocks agree on it; ``Lease.expires_at`` is in
the server's time. The schema is created if missing (under an advisory lock, so
masters may start together). Durability is PostgreSQL's: keep ``fsync`` and
``synchronous_commit`` on (the defaults) for mawex's guarantees.

A leader that stops in the middle of a write transaction (SIGSTOP, a VM pause, a
network partition) would hold the lease row's lock, and with it every
standby's ``acquire``, for as long as the server keeps its session. So the
journal's sessions run with ``idle_in_transaction_session_timeout`` (default
:data:`IDLE_IN_TRANSACTION_TIMEOUT_MS`; a URL query option of that name
overrides it): the server ends such a session, rolls its transaction back and
frees the row; the stalled leader, when it resumes, finds its connection gone
and steps down.

A standby does not wait for the lease of a leader whose database session has
ended (its process killed or crashed, its host's network stack closing its
connections): every master holds a session advisory lock of its own on one more
connection, taken before its lease can name it, and the lease row records the
server time it was taken (``present_since``); an ``acquire`` that can take the
holder's lock takes the lease at once. A server restarted since then tells
nothing (every session ended), so then the lease lapses as usual, as it does
when the holder's host died without closing its connections (until the server's
TCP keepalive notices).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit

import asyncpg

from mawex.errors import FencedOut, JournalError, MawexError
from mawex.journal import JournalURL, check_batch, check_namespace, load_queries, redact
from mawex.journal.base import Lease, Member, Record, Snapshot
from mawex.journal.presence import PresenceRetry

_Q: Final = load_queries("postgresql.sql")
#: What the driver raises for a failed call. InternalClientError comes, for one, from a
#: connection the server ended under a transaction (idle_in_transaction_session_timeout).
_DRIVER_ERRORS: Final = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)

#: Connections kept by each journal: the master's writes are sequential, readers few.
POOL_MIN: Final = 1
POOL_MAX: Final = 4
#: Seconds to wait for the server on connect.
CONNECT_TIMEOUT: Final = 10.0
#: Longest a presence lock's check or reconnection may delay an acquire or a renewal.
PRESENCE_TIMEOUT: Final = 1.0
#: How long (ms) the server lets a journal session sit idle inside a transaction (a stalled
#: leader's) before ending it and releasing its locks. Journal transactions take milliseconds.
IDLE_IN_TRANSACTION_TIMEOUT_MS: Final = 5000


def _record(row: Any) -> Record:
    return Record(row[0], row[1], row[2], row[3], row[4])


async def _keep_session(conn: Any) -> None:
    """Hand a connection back as it is: the journal sets no session state (asyncpg
    still rolls back an open transaction first)."""


def _fence(epoch: int, current: int) -> None:
    if epoch != current:
        raise FencedOut(f"epoch {epoch} is fenced out: the journal's epoch is {current}")


class _PresenceSessions:
    """This process's presence locks: per lease holder, a connection of its own that
    holds a session advisory lock while the journal is open (see the module docstring)."""

    def __init__(self, journal: PostgreSQLJournal) -> None:
        self._journal = journal
        self._held: dict[str, tuple[Any, float]] = {}
        self._lock = asyncio.Lock()
        self._retry = PresenceRetry()

    async def since(self, holder: str, *, check: bool) -> float | None:
        """The server time ``holder``'s lock was taken, taking it first if needed
        (``check``: make sure its session still answers); None if it cannot be held,
        and then the lease only lapses."""
        async with self._lock:
            held = self._held.get(holder)
            if held is not None:
                conn, since = held
                try:
                    if not conn.is_closed() and (
                        not check or await conn.fetchval(_Q["ping"], timeout=PRESENCE_TIMEOUT)
                    ):
                        return since
                except _DRIVER_ERRORS:
                    pass
                del self._held[holder]
                conn.terminate()
            if not self._retry.due():
                return None
            try:
                taken_at: float | None = await asyncio.wait_for(
                    self._hold(holder), PRESENCE_TIMEOUT
                )
            except (*_DRIVER_ERRORS, ValueError) as e:
                self._retry.failed(holder, f"{type(e).__name__}: {e}")
                return None
            if taken_at is None:
                self._retry.failed(holder, "another session holds it")
            else:
                self._retry.succeeded()
            return taken_at

    async def _hold(self, holder: str) -> float | None:
        journal = self._journal
        conn = await asyncpg.connect(
            journal.dsn, timeout=PRESENCE_TIMEOUT, server_settings=journal._server_settings()
        )
        try:
            locked, since = await conn.fetchrow(_Q["hold_presence"], journal.namespace, holder)
        except BaseException:
            conn.terminate()
            raise
        if not locked:
            conn.terminate()
            return None
        self._held[holder] = (conn, float(since))
        return float(since)

    async def close(self) -> None:
        """Release every lock (by ending its session)."""
        async with self._lock:
            held, self._held = self._held, {}
        for conn, _ in held.values():
            try:
                await asyncio.wait_for(conn.close(), PRESENCE_TIMEOUT)
            except (TimeoutError, *_DRIVER_ERRORS):
                conn.terminate()


class PostgreSQLJournal:
    """A journal in a PostgreSQL database (see the module docstring)."""

    def __init__(self, dsn: str, *, namespace: str = "default") -> None:
        self.dsn = dsn
        self.namespace = check_namespace(namespace)
        self._pool: Any = None
        self._closed = False
        self._presence = _PresenceSessions(self)

    @classmethod
    def from_url(cls, url: JournalURL, *, namespace: str = "default") -> PostgreSQLJournal:
        """The journal for a parsed ``postgresql://`` URL."""
        return cls(url.url, namespace=namespace)

    def __repr__(self) -> str:
        return f"PostgreSQLJournal({redact(self.dsn)!r}, namespace={self.namespace!r})"

    def _error(self, e: BaseException) -> JournalError:
        return JournalError(f"PostgreSQL journal {redact(self.dsn)}: {type(e).__name__}: {e}")

    def _require_open(self) -> Any:
        pool = self._pool
        if pool is None:
            raise JournalError(f"{self!r} is {'closed' if self._closed else 'not open'}")
        return pool

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        """A pooled connection; driver errors become JournalError."""
        pool = self._require_open()
        try:
            async with pool.acquire() as conn:
                yield conn
        except MawexError:
            raise
        except asyncpg.UniqueViolationError as e:
            raise JournalError(f"{self!r}: an offset was written concurrently: {e}") from e
        except _DRIVER_ERRORS as e:
            raise self._error(e) from e

    @asynccontextmanager
    async def _write(self, epoch: int) -> AsyncIterator[Any]:
        """A transaction holding the namespace's lease row, after checking ``epoch``."""
        async with self._connection() as conn, conn.transaction():
            current = await conn.fetchval(_Q["lock_epoch"], self.namespace)
            if current is None:
                raise JournalError(f"{self!r}: the lease row is missing; reopen the journal")
            _fence(epoch, current)
            yield conn

    async def _state(self, conn: Any) -> tuple[int, int | None]:
        row = await conn.fetchrow(_Q["write_state"], self.namespace)
        return int(row[0]), row[1]

    # -- lifecycle ------------------------------------------------------------

    async def open(self) -> None:
        if self._pool is not None:
            return
        try:
            pool = await asyncpg.create_pool(
                self.dsn,
                min_size=POOL_MIN,
                max_size=POOL_MAX,
                timeout=CONNECT_TIMEOUT,
                server_settings=self._server_settings(),
                reset=_keep_session,
            )
        except MawexError:
            raise
        except (*_DRIVER_ERRORS, ValueError) as e:
            raise self._error(e) from e
        self._pool = pool
        self._closed = False
        try:
            async with self._connection() as conn, conn.transaction():
                await conn.execute(_Q["schema_lock"])
                await conn.execute(_Q["schema"])
                await conn.execute(_Q["ensure_lease_row"], self.namespace)
        except BaseException:
            await self.close()
            self._closed = False
            raise

    def _server_settings(self) -> dict[str, str]:
        settings = {"application_name": f"mawex:{self.namespace}"}
        try:
            in_url = {k for k, _ in parse_qsl(urlsplit(self.dsn).query)}
        except ValueError:
            in_url = set()
        if "idle_in_transaction_session_timeout" not in in_url:
            settings["idle_in_transaction_session_timeout"] = str(IDLE_IN_TRANSACTION_TIMEOUT_MS)
        return settings

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        self._closed = True
        await self._presence.close()
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), CONNECT_TIMEOUT)
            except (TimeoutError, *_DRIVER_ERRORS):
                pool.terminate()

    # -- records --------------------------------------------------------------

    async def append(self, records: Sequence[Record], epoch: int) -> None:
        check_batch(records)
        if not records:
            async with self._write(epoch):
                return
        async with self._connection() as conn:
            current, last, inserted = await conn.fetchrow(
                _Q["append"],
                self.namespace,
                [r.offset for r in records],
                [r.topic for r in records],
                [r.at for r in records],
                [r.body for r in records],
                epoch,
            )
        if current is None:
            raise JournalError(f"{self!r}: the lease row is missing; reopen the journal")
        _fence(epoch, current)
        first = records[0].offset
        if first != last + 1:
            raise JournalError(f"offset {first} is not the next offset {last + 1}")
        if inserted != len(records):
            raise JournalError(f"{inserted} of {len(records)} records were written")

    async def read(self, from_offset: int, limit: int) -> list[Record]:
        async with self._connection() as conn:
            if limit <= 0:
                return []
            rows = await conn.fetch(_Q["read"], self.namespace, from_offset, limit)
        return [_record(row) for row in rows]

    async def read_topic(self, from_topic: int, limit: int) -> list[Record]:
        async with self._connection() as conn:
            if limit <= 0:
                return []
            rows = await conn.fetch(_Q["read_topic"], self.namespace, from_topic, limit)
        return [_record(row) for row in rows]

    async def last_offset(self) -> int:
        async with self._connection() as conn:
            return int(await conn.fetchval(_Q["last_offset"], self.namespace))

    async def save_snapshot(self, snapshot: Snapshot, epoch: int) -> None:
        async with self._write(epoch) as conn:
            last, _ = await self._state(conn)
            if snapshot.offset > last:
                raise JournalError(
                    f"snapshot offset {snapshot.offset} is beyond the last offset {last}"
                )
            await conn.execute(_Q["save_snapshot"], self.namespace, snapshot.offset, snapshot.body)

    async def load_snapshot(self) -> Snapshot | None:
        async with self._connection() as conn:
            row = await conn.fetchrow(_Q["load_snapshot"], self.namespace)
        return None if row is None else Snapshot(row[0], row[1])

    async def trim(self, before_offset: int, keep_topic_from: int, epoch: int) -> int:
        async with self._write(epoch) as conn:
            _, snap = await self._state(conn)
            before = min(before_offset, (snap or 0) + 1)
            status = await conn.execute(_Q["trim"], self.namespace, before, keep_topic_from)
        return int(status.split()[-1])

    # -- lease ----------------------------------------------------------------

    async def acquire(self, holder: str, ttl: float, url: str | None) -> Lease | None:
        """Also takes a lease that has not lapsed when its holder's session has ended
        (see the module docstring)."""
        self._require_open()
        # Before the lease can name this holder, so that its presence is never unknown.
        since = await self._presence.since(holder, check=False)
        async with self._connection() as conn:
            await conn.execute(_Q["ensure_lease_row"], self.namespace)
            row = await conn.fetchrow(_Q["acquire"], self.namespace, holder, float(ttl), url, since)
        return None if row is None else Lease(holder, row[0], row[1], url)

    async def renew(self, lease: Lease, ttl: float) -> Lease:
        self._require_open()
        since = await self._presence.since(lease.holder, check=True)
        async with self._connection() as conn:
            expires_at = await conn.fetchval(
                _Q["renew"], self.namespace, lease.epoch, lease.holder, float(ttl), since
            )
        if expires_at is None:
            raise FencedOut(f"the lease of epoch {lease.epoch} was lost")
        return Lease(lease.holder, lease.epoch, expires_at, lease.url)

    async def release(self, lease: Lease) -> None:
        async with self._connection() as conn:
            await conn.execute(_Q["release"], self.namespace, lease.epoch)

    async def current_lease(self) -> Lease | None:
        async with self._connection() as conn:
            row = await conn.fetchrow(_Q["current_lease"], self.namespace)
        if row is None or row[0] is None:
            return None
        return Lease(row[0], row[1], row[2], row[3])

    # -- membership -------------------------------------------------------------

    async def announce(self, member: Member, ttl: float) -> None:
        async with self._connection() as conn, conn.transaction():
            if ttl > 0:
                await conn.execute(
                    _Q["announce"],
                    self.namespace,
                    member.holder,
                    member.url,
                    member.role,
                    float(ttl),
                )
            else:
                await conn.execute(_Q["withdraw"], self.namespace, member.holder)
            await conn.execute(_Q["prune_members"], self.namespace)

    async def members(self) -> list[Member]:
        async with self._connection() as conn:
            rows = await conn.fetch(_Q["members"], self.namespace)
        return [Member(*row) for row in rows]


__all__ = ["PostgreSQLJournal"]
