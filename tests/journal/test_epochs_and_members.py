"""Writer epochs on records and membership: the suite's teeth and stores made by older versions."""

from __future__ import annotations

import sqlite3
import struct
from collections.abc import Sequence
from pathlib import Path

import pytest

from mawex.errors import FencedOut, JournalError
from mawex.journal import open_journal
from mawex.journal.base import Journal, Lease, Member, Record
from mawex.journal.memory import MemoryJournal
from mawex.testing import FakeClock, check_members, check_record_epochs

from .test_conformance import memory_factory

# -- the checks have teeth ---------------------------------------------------------------


class EpochlessMemoryJournal(MemoryJournal):
    """Keeps whatever epoch the records carry instead of the appending one."""

    async def append(self, records: Sequence[Record], epoch: int) -> None:
        await super().append(records, epoch)
        self._records[-len(records) :] = list(records)


class ImmortalMembersJournal(MemoryJournal):
    async def announce(self, member: Member, ttl: float) -> None:
        await super().announce(member, 1e9 if ttl > 0 else ttl)


async def test_suite_catches_a_journal_that_drops_epochs() -> None:
    with pytest.raises(AssertionError, match="epoch"):
        await check_record_epochs(memory_factory(EpochlessMemoryJournal))


async def test_suite_catches_members_that_never_expire() -> None:
    with pytest.raises(AssertionError, match=r"expires_at - seen_at|TTL lapsed"):
        await check_members(memory_factory(ImmortalMembersJournal))


async def test_memory_members_follow_the_clock() -> None:
    clock = FakeClock(1000.0)
    journal = MemoryJournal(clock)
    await journal.announce(Member("a", "http://a", "leader"), 3.0)
    clock.advance(1.0)
    (member,) = await journal.members()
    assert (member.seen_at, member.expires_at, member.seen_s_ago) == (1000.0, 1003.0, 1.0)
    clock.advance(2.0)
    assert await journal.members() == []


# -- stores made before records carried epochs -------------------------------------------

OLD_SQLITE_SCHEMA = """
CREATE TABLE mawex_lease (ns TEXT PRIMARY KEY, holder TEXT, epoch INTEGER NOT NULL,
    expires_at REAL NOT NULL, url TEXT);
CREATE TABLE mawex_records (ns TEXT NOT NULL, seq INTEGER NOT NULL, topic INTEGER,
    at REAL NOT NULL, body BLOB NOT NULL, PRIMARY KEY (ns, seq));
CREATE TABLE mawex_snapshot (ns TEXT PRIMARY KEY, seq INTEGER NOT NULL, body BLOB NOT NULL);
INSERT INTO mawex_lease VALUES ('default', 'old', 3, 0, NULL);
INSERT INTO mawex_records VALUES ('default', 1, 1, 5.0, x'6f6c64');
"""


async def test_sqlite_file_without_epochs_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(OLD_SQLITE_SCHEMA)
    conn.close()
    journal = open_journal(f"sqlite:///{path}")
    await journal.open()
    try:
        assert await journal.read(1, 10) == [Record(1, 1, 5.0, b"old", 0)]
        lease = await journal.acquire("new", 5, None)
        assert lease is not None and lease.epoch == 4
        await journal.append([Record(2, None, 6.0, b"new")], lease.epoch)
        assert [r.epoch for r in await journal.read(1, 10)] == [0, 4]
    finally:
        await journal.close()
    again = open_journal(f"sqlite:///{path}")  # a second open finds the column in place
    await again.open()
    await again.close()


@pytest.mark.postgresql
async def test_postgresql_database_without_epochs_or_presence_is_migrated(
    postgresql_url: str,
) -> None:
    import asyncpg

    conn = await asyncpg.connect(postgresql_url)
    try:
        await conn.execute("ALTER TABLE mawex_records DROP COLUMN epoch")
        await conn.execute("ALTER TABLE mawex_lease DROP COLUMN present_since")
        await conn.execute("DROP TABLE mawex_members")
        await conn.execute(
            "INSERT INTO mawex_records (ns, seq, topic, at, body) VALUES ('default', 1, 1, 5, 'x')"
        )
        await conn.execute(
            "INSERT INTO mawex_lease VALUES ('default', NULL, 2, to_timestamp(0), NULL) "
            "ON CONFLICT (ns) DO UPDATE SET epoch = 2"
        )
    finally:
        await conn.close()
    journal = open_journal(postgresql_url)
    await journal.open()
    try:
        assert await journal.read(1, 10) == [Record(1, 1, 5.0, b"x", 0)]
        lease = await journal.acquire("new", 5, None)
        assert lease is not None
        await journal.append([Record(2, None, 6.0, b"y")], lease.epoch)
        assert [r.epoch for r in await journal.read(1, 10)] == [0, lease.epoch]
        await journal.announce(Member("new", None, "leader"), 5)
        assert [m.holder for m in await journal.members()] == ["new"]
    finally:
        await journal.close()


@pytest.mark.redis
async def test_redis_reads_records_written_without_epochs(
    redis_url: str, redis_namespace: str
) -> None:
    import redis.asyncio as aioredis

    from mawex.journal.redis import KEY_PREFIX, RECORD_HEADER_V1

    namespace = f"{redis_namespace}-old"
    prefix = KEY_PREFIX.format(namespace)
    client = aioredis.Redis.from_url(redis_url)
    try:
        old = RECORD_HEADER_V1.pack(True, 1, 5.0) + b"old"
        await client.hset(prefix + "records", "1", old)
        await client.zadd(prefix + "log", {"1": 1})
        await client.zadd(prefix + "topic", {"1": 1})
        await client.hset(prefix + "meta", "last", "1")
    finally:
        await client.aclose()
    journal = open_journal(redis_url, namespace=namespace)
    await journal.open()
    try:
        assert await journal.read(1, 10) == [Record(1, 1, 5.0, b"old", 0)]
        lease = await journal.acquire("new", 5, None)
        assert lease is not None
        await journal.append([Record(2, None, 6.0, b"new")], lease.epoch)
        assert await journal.read(2, 10) == [Record(2, None, 6.0, b"new", lease.epoch)]
        assert await journal.read_topic(1, 10) == [Record(1, 1, 5.0, b"old", 0)]
    finally:
        await journal.close()


def test_redis_record_header_is_versioned_by_its_flags() -> None:
    pytest.importorskip("redis")
    from mawex.journal.redis import HAS_EPOCH, RECORD_HEADER, RECORD_HEADER_V1, _pack, _unpack

    assert struct.calcsize(RECORD_HEADER.format) == 25
    assert struct.calcsize(RECORD_HEADER_V1.format) == 17
    packed = _pack(Record(7, None, 1.5, b"body", epoch=99), 12)
    assert packed[0] & HAS_EPOCH
    assert _unpack(b"7", packed) == Record(7, None, 1.5, b"body", 12)
    assert _unpack(b"7", _pack(Record(7, 3, 1.5, b""), 1)) == Record(7, 3, 1.5, b"", 1)


# -- a stalled leader must not hold the takeover ---------------------------------------------


@pytest.mark.postgresql
async def test_postgresql_sessions_end_idle_transactions(postgresql_url: str) -> None:
    journal = open_journal(postgresql_url)
    await journal.open()
    try:
        async with journal._connection() as conn:  # type: ignore[attr-defined]
            assert await conn.fetchval("SHOW idle_in_transaction_session_timeout") == "5s"
    finally:
        await journal.close()


@pytest.mark.postgresql
async def test_postgresql_leader_stalled_mid_transaction_is_taken_over(
    postgresql_url: str,
) -> None:
    """A leader paused inside an append holds the lease row; the server ends its session."""
    import asyncio

    url = f"{postgresql_url}?idle_in_transaction_session_timeout=300"
    a, b = open_journal(url, namespace="stall"), open_journal(url, namespace="stall")
    await a.open()
    await b.open()
    try:
        old = await a.acquire("a", 0.2, None)
        assert old is not None
        with pytest.raises(JournalError):
            async with a._connection() as conn:  # type: ignore[attr-defined]
                transaction = conn.transaction()
                await transaction.start()
                await conn.fetchval(
                    "SELECT epoch FROM mawex_lease WHERE ns = $1 FOR UPDATE", "stall"
                )
                # ... and the leader stalls here, holding the row lock
                new = await asyncio.wait_for(_acquire_when_free(b), 10)
                assert new.epoch > old.epoch
                await conn.fetchval("SELECT 1")  # the stalled session is gone
        with pytest.raises(FencedOut):
            await a.append([Record(1, None, 0.0, b"late")], old.epoch)
        assert await b.read(1, 10) == []
    finally:
        await a.close()
        await b.close()


async def _acquire_when_free(journal: Journal) -> Lease:
    import asyncio

    while (lease := await journal.acquire("b", 5, None)) is None:
        await asyncio.sleep(0.05)
    return lease
