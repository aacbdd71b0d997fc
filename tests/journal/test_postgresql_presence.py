"""PostgreSQL: a standby takes the lease of a master whose session ended, at once.

Real processes on a real server: each child holds its own journal (and presence
session), driven by the JSON commands of ``test_sqlite_processes``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest

from tests.journal.test_sqlite_processes import (
    NAMESPACE,
    children,
    paused_holder_kept_killed_one_taken_over,
)

#: Longer than any wait here: a takeover within the test cannot be the lease lapsing.
TTL = 600


@pytest.fixture
async def spawn(postgresql_url: str) -> AsyncIterator[Callable[[], Any]]:
    async with children(postgresql_url) as start:
        yield start


async def _sql(url: str, query: str, *args: Any) -> Any:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


async def test_a_killed_holder_is_taken_over_before_its_lease_lapses(
    spawn: Any, postgresql_url: str
) -> None:
    a, b = await spawn(), await spawn()
    await paused_holder_kept_killed_one_taken_over(a, b, TTL)
    c = await spawn()
    assert await c.call("acquire", holder="C", ttl=TTL) == {"epoch": None}, "B runs"


async def test_a_server_restart_since_the_lock_proves_nothing(
    spawn: Any, postgresql_url: str
) -> None:
    a, b = await spawn(), await spawn()
    assert await a.call("acquire", holder="A", ttl=TTL) == {"epoch": 1}
    # as if the server had restarted after A took its lock (every session ends then)
    await _sql(
        postgresql_url,
        "UPDATE mawex_lease SET present_since = pg_postmaster_start_time() - interval '1 s' "
        "WHERE ns = $1",
        NAMESPACE,
    )
    a.proc.kill()
    await a.proc.wait()
    for _ in range(3):
        assert await b.call("acquire", holder="B", ttl=TTL) == {"epoch": None}
    await _sql(
        postgresql_url, "UPDATE mawex_lease SET present_since = now() WHERE ns = $1", NAMESPACE
    )
    assert await b.call("acquire_when_free", holder="B", ttl=TTL) == {"epoch": 2}


async def test_a_renewal_takes_a_lost_presence_lock_again(spawn: Any, postgresql_url: str) -> None:
    a, b = await spawn(), await spawn()
    assert await a.call("acquire", holder="A", ttl=TTL) == {"epoch": 1}
    (before,) = await _sql(
        postgresql_url, "SELECT present_since FROM mawex_lease WHERE ns = $1", NAMESPACE
    )
    ended = await _sql(
        postgresql_url,
        "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    assert [row[0] for row in ended] == [True], "A's presence session, and only it"
    assert await a.call("renew", ttl=TTL) == {"epoch": 1}
    (after,) = await _sql(
        postgresql_url, "SELECT present_since FROM mawex_lease WHERE ns = $1", NAMESPACE
    )
    assert after[0] > before[0], "the renewal took the lock again, and says since when"
    assert await b.call("acquire", holder="B", ttl=TTL) == {"epoch": None}, "A holds it again"
