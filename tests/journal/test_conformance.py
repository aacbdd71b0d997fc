"""Every journal backend against mawex.testing's conformance checks, plus backend specifics."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from mawex.errors import FencedOut, JournalError
from mawex.journal import open_journal
from mawex.journal.base import Journal, Lease, Member, Record, Snapshot
from mawex.journal.memory import MemoryJournal
from mawex.testing import (
    CHECKS,
    FakeClock,
    JournalFactory,
    check_journal,
    check_offsets_contiguous,
    check_stale_epoch_fenced,
)


class SharedMemoryHandle:
    """A handle with its own open/closed state on a MemoryJournal shared by handles."""

    def __init__(self, store: MemoryJournal) -> None:
        self._store = store
        self._open = False

    def _live(self) -> MemoryJournal:
        if not self._open:
            raise JournalError("handle is closed")
        return self._store

    async def open(self) -> None:
        self._open = True

    async def close(self) -> None:
        self._open = False

    async def append(self, records: Sequence[Record], epoch: int) -> None:
        await self._live().append(records, epoch)

    async def read(self, from_offset: int, limit: int) -> list[Record]:
        return await self._live().read(from_offset, limit)

    async def read_topic(self, from_topic: int, limit: int) -> list[Record]:
        return await self._live().read_topic(from_topic, limit)

    async def last_offset(self) -> int:
        return await self._live().last_offset()

    async def save_snapshot(self, snapshot: Snapshot, epoch: int) -> None:
        await self._live().save_snapshot(snapshot, epoch)

    async def load_snapshot(self) -> Snapshot | None:
        return await self._live().load_snapshot()

    async def trim(self, before_offset: int, keep_topic_from: int, epoch: int) -> int:
        return await self._live().trim(before_offset, keep_topic_from, epoch)

    async def acquire(self, holder: str, ttl: float, url: str | None) -> Lease | None:
        return await self._live().acquire(holder, ttl, url)

    async def renew(self, lease: Lease, ttl: float) -> Lease:
        return await self._live().renew(lease, ttl)

    async def release(self, lease: Lease) -> None:
        await self._live().release(lease)

    async def current_lease(self) -> Lease | None:
        return await self._live().current_lease()

    async def announce(self, member: Member, ttl: float) -> None:
        await self._live().announce(member, ttl)

    async def members(self) -> list[Member]:
        return await self._live().members()


def memory_factory(store_type: type[MemoryJournal] = MemoryJournal) -> JournalFactory:
    """A factory of handles on one in-process store per namespace."""
    stores: dict[str, MemoryJournal] = {}

    async def make(namespace: str) -> Journal:
        handle = SharedMemoryHandle(stores.setdefault(namespace, store_type()))
        await handle.open()
        return handle

    return make


def url_factory(url: str, prefix: str = "") -> JournalFactory:
    """A factory of handles opened by URL, their namespaces prefixed with ``prefix``."""

    async def make(namespace: str) -> Journal:
        journal = open_journal(url, namespace=prefix + namespace)
        await journal.open()
        return journal

    return make


@pytest.fixture(
    params=[
        "memory",
        "sqlite",
        pytest.param("postgresql", marks=pytest.mark.postgresql),
        pytest.param("redis", marks=pytest.mark.redis),
    ]
)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_journal(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> JournalFactory:
    """A factory of handles on a fresh store of ``backend``."""
    if backend == "memory":
        return memory_factory()
    if backend == "sqlite":
        return url_factory(f"sqlite:///{tmp_path / 'journal.db'}")
    if backend == "postgresql":
        return url_factory(request.getfixturevalue("postgresql_url"))
    prefix = request.getfixturevalue("redis_namespace")
    return url_factory(request.getfixturevalue("redis_url"), prefix=f"{prefix}-")


@pytest.mark.parametrize("check", list(CHECKS))
async def test_conformance(check: str, backend: str, make_journal: JournalFactory) -> None:
    await CHECKS[check](make_journal)


async def test_check_journal_runs_every_check(tmp_path: Path) -> None:
    await check_journal(url_factory(f"sqlite:///{tmp_path / 'all.db'}?synchronous=normal"))


# -- the suite has teeth -----------------------------------------------------------


class UnfencedMemoryJournal(MemoryJournal):
    def _fence(self, epoch: int) -> None:
        pass


class GappyMemoryJournal(MemoryJournal):
    async def append(self, records: Sequence[Record], epoch: int) -> None:
        self._records.extend(records)


async def test_suite_catches_a_journal_without_fencing() -> None:
    with pytest.raises(AssertionError, match="stale epoch"):
        await check_stale_epoch_fenced(memory_factory(UnfencedMemoryJournal))


async def test_suite_catches_a_journal_accepting_gaps() -> None:
    with pytest.raises(AssertionError, match="first append starting at 2"):
        await check_offsets_contiguous(memory_factory(GappyMemoryJournal))


def test_fake_clock() -> None:
    clock = FakeClock(100.0)
    assert clock() == 100.0
    assert clock.advance(2.5) == 102.5
    clock.now = 7.0
    assert clock() == 7.0


async def test_memory_journal_with_a_fake_clock() -> None:
    clock = FakeClock()
    journal = MemoryJournal(clock)
    lease = await journal.acquire("a", 10, None)
    assert lease is not None
    assert await journal.acquire("b", 10, None) is None
    clock.advance(10.001)
    taken = await journal.acquire("b", 10, None)
    assert taken is not None and taken.epoch == lease.epoch + 1
    with pytest.raises(FencedOut):
        await journal.append([Record(1, None, 0.0, b"")], lease.epoch)


# -- SQLite specifics -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "pragma"), [("", 2), ("?synchronous=full", 2), ("?synchronous=normal", 1)]
)
async def test_sqlite_synchronous_option(tmp_path: Path, option: str, pragma: int) -> None:
    from mawex.journal.sqlite import SQLiteJournal

    journal = open_journal(f"sqlite:///{tmp_path / 'j.db'}{option}")
    assert isinstance(journal, SQLiteJournal)
    await journal.open()
    try:
        value = await journal._run(lambda conn: conn.execute("PRAGMA synchronous").fetchone()[0])
        assert value == pragma
    finally:
        await journal.close()
    with sqlite3.connect(tmp_path / "j.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


async def test_sqlite_runs_on_its_own_thread_and_stops_it(tmp_path: Path) -> None:
    from mawex.journal.sqlite import SQLiteJournal

    journal = open_journal(f"sqlite:///{tmp_path / 'j.db'}", namespace="threads")
    assert isinstance(journal, SQLiteJournal)
    await journal.open()
    thread_id = await journal._run(lambda conn: threading.get_ident())
    assert thread_id != threading.get_ident()
    assert any(t.name.startswith("mawex-sqlite-threads") for t in threading.enumerate())
    await journal.close()
    await asyncio.sleep(0.05)
    assert not any(t.name.startswith("mawex-sqlite-threads") for t in threading.enumerate())


async def test_sqlite_missing_directory_is_a_journal_error(tmp_path: Path) -> None:
    journal = open_journal(f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}")
    with pytest.raises(JournalError, match=r"dir\.db") as info:
        await journal.open()
    assert isinstance(info.value.__cause__, sqlite3.Error)
    with pytest.raises(JournalError, match="not open"):
        await journal.read(1, 10)


async def test_sqlite_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    journal = open_journal("sqlite:///./rel.db")
    await journal.open()
    await journal.close()
    assert (tmp_path / "rel.db").exists()


# -- PostgreSQL specifics -------------------------------------------------------------


@pytest.mark.postgresql
async def test_postgresql_creates_its_schema_once_with_concurrent_masters(
    postgresql_url: str,
) -> None:
    import asyncpg

    conn = await asyncpg.connect(postgresql_url)
    try:
        await conn.execute("DROP TABLE mawex_lease, mawex_records, mawex_snapshot")
    finally:
        await conn.close()
    journals = [open_journal(postgresql_url, namespace=f"m{i}") for i in range(4)]
    await asyncio.gather(*(j.open() for j in journals))
    try:
        leases = await asyncio.gather(*(j.acquire("x", 5, None) for j in journals))
        assert [lease.epoch for lease in leases if lease] == [1, 1, 1, 1]
    finally:
        await asyncio.gather(*(j.close() for j in journals))


@pytest.mark.postgresql
async def test_postgresql_unreachable_is_a_journal_error() -> None:
    journal = open_journal("postgresql://postgres@127.0.0.1:1/none", namespace="x")
    with pytest.raises(JournalError, match="PostgreSQL journal") as info:
        await journal.open()
    assert info.value.__cause__ is not None


# -- Redis specifics ------------------------------------------------------------------


@pytest.mark.redis
async def test_redis_keeps_every_key_under_its_namespace_prefix(
    redis_url: str, redis_namespace: str
) -> None:
    import redis.asyncio as aioredis

    namespace = f"{redis_namespace}-keys"
    await check_stale_epoch_fenced(url_factory(redis_url, prefix=f"{namespace}-"))
    journal = open_journal(redis_url, namespace=namespace)
    await journal.open()
    try:
        lease = await journal.acquire("a", 5, None)
        assert lease is not None
        await journal.append([Record(1, 1, 0.0, b"x"), Record(2, None, 0.0, b"y")], lease.epoch)
        await journal.save_snapshot(Snapshot(2, b"s"), lease.epoch)
        await journal.announce(Member("a", None, "leader"), 5)
    finally:
        await journal.close()
    client = aioredis.Redis.from_url(redis_url)
    try:
        keys = {key.decode() async for key in client.scan_iter(match=f"*{namespace}*")}
    finally:
        await client.aclose()
    prefix = f"mawex:{{{namespace}}}:"
    mine = {key for key in keys if key.startswith(prefix)}
    assert mine == {
        prefix + k
        for k in ("lease", "meta", "records", "log", "plain", "topic", "snapshot", "members")
    }
    assert all(key.startswith(f"mawex:{{{namespace}") for key in keys)


@pytest.mark.redis
async def test_redis_large_trim_runs_in_chunks(
    redis_url: str, redis_namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mawex.journal import redis as redis_journal

    monkeypatch.setattr(redis_journal, "TRIM_CHUNK", 7)
    journal = open_journal(redis_url, namespace=f"{redis_namespace}-chunks")
    await journal.open()
    try:
        lease = await journal.acquire("a", 5, None)
        assert lease is not None
        records = [Record(o, o // 3 if o % 3 == 0 else None, 0.0, b"") for o in range(1, 61)]
        await journal.append(records, lease.epoch)
        await journal.save_snapshot(Snapshot(50, b"s"), lease.epoch)
        assert await journal.trim(100, 10, lease.epoch) == 50 - 7
        left = [r.offset for r in await journal.read(1, 100)]
        assert left == [30, 33, 36, 39, 42, 45, 48, *range(51, 61)]
    finally:
        await journal.close()


@pytest.mark.parametrize("sync", ["normal", "full"])
async def test_sqlite_small_appends_run_on_the_loop_while_the_thread_is_idle(
    tmp_path: Path, sync: str
) -> None:
    from mawex.journal import sqlite as sqlite_journal

    journal = sqlite_journal.SQLiteJournal(tmp_path / "j.db", synchronous=sync)  # type: ignore[arg-type]
    await journal.open()
    threads: list[int] = []
    call = journal._call

    def recording(fn):  # type: ignore[no-untyped-def]
        threads.append(threading.get_ident())
        return call(fn)

    def on_loop() -> bool:
        return threads[-1] == threading.get_ident()

    journal._call = recording  # type: ignore[method-assign]
    try:
        lease = await journal.acquire("a", 10, None)
        assert lease is not None
        threads.clear()
        await journal.append([Record(1, None, 0.0, b"one")], lease.epoch)
        assert on_loop()

        # with the thread busy, an append waits its turn there, never beside it
        gate = threading.Event()
        slow = asyncio.ensure_future(journal._run(lambda conn: gate.wait(5)))
        await asyncio.sleep(0.01)
        append = asyncio.ensure_future(journal.append([Record(2, 0, 0.0, b"two")], lease.epoch))
        await asyncio.sleep(0.01)
        assert not append.done()
        gate.set()
        await asyncio.gather(slow, append)
        assert not on_loop()
        assert [r.body for r in await journal.read(1, 10)] == [b"one", b"two"]
        # the thread is idle again: a small append is back on the loop (fsync'd, once
        # the last fsync was quick: on a loaded disk the one on the thread may not be)
        offset = 3
        while offset < 13:
            await journal.append([Record(offset, None, 0.0, b"three")], lease.epoch)
            offset += 1
            if on_loop():
                break
        assert on_loop()
        assert offset == 4 or sync == "full"

        # a big batch: on the loop only without an fsync
        batch = [
            Record(offset + i, None, 0.0, b"x")
            for i in range(sqlite_journal.INLINE_FSYNC_RECORDS + 1)
        ]
        await journal.append(batch, lease.epoch)
        assert on_loop() is (sync == "normal")
        # after a slow fsync'd append (a slow disk), small ones go to the thread too,
        # until one is quick again
        offset = batch[-1].offset + 1
        journal._fsync_seconds = sqlite_journal.INLINE_FSYNC_SECONDS
        await journal.append([Record(offset, None, 0.0, b"y")], lease.epoch)
        assert on_loop() is (sync == "normal")
        for extra in range(1, 11):  # (on a loaded disk an fsync may take longer)
            await journal.append([Record(offset + extra, None, 0.0, b"z")], lease.epoch)
            if on_loop():
                break
        assert on_loop()
        assert len(await journal.read(1, 100)) == offset + extra
    finally:
        await journal.close()


async def test_sqlite_trim_deletes_in_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mawex.journal import sqlite as sqlite_journal

    monkeypatch.setattr(sqlite_journal, "TRIM_CHUNK", 7)
    journal = sqlite_journal.SQLiteJournal(tmp_path / "j.db")
    await journal.open()
    try:
        lease = await journal.acquire("a", 10, None)
        assert lease is not None
        # 50 records; every 10th is a topic record
        records = [Record(i, i // 10 if i % 10 == 0 else None, 0.0, b"x") for i in range(1, 51)]
        await journal.append(records, lease.epoch)
        await journal.save_snapshot(Snapshot(50, b"state"), lease.epoch)
        deleted = await journal.trim(51, 4, lease.epoch)  # keep topic records from 4 on
        assert deleted == 48  # 45 non-topic + topics 1, 2, 3: seven chunks, the last short
        kept = await journal.read(1, 100)
        assert [(r.offset, r.topic) for r in kept] == [(40, 4), (50, 5)]
    finally:
        await journal.close()
