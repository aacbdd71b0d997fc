"""Redis: a standby takes the lease of a master whose connection closed, at once.

Real processes on a real server: each child holds its own journal (and presence
subscription), driven by the JSON commands of ``test_sqlite_processes``.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from mawex.journal import open_journal
from mawex.journal.redis import KEY_PREFIX, LEASE_KEY, PRESENCE_CHANNEL
from tests.journal.test_sqlite_processes import (
    children,
    paused_holder_kept_killed_one_taken_over,
)

#: Longer than any wait here: a takeover within the test cannot be the lease lapsing.
TTL = 600


@pytest.fixture
async def spawn(redis_url: str, redis_namespace: str) -> AsyncIterator[Callable[[], Any]]:
    async with children(redis_url, redis_namespace) as start:
        yield start


@pytest.fixture
async def server(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


def _lease_key(namespace: str) -> str:
    return KEY_PREFIX.format(namespace) + LEASE_KEY


async def _subscribers(server: aioredis.Redis) -> set[int]:
    return {int(c["id"]) for c in await server.client_list(_type="pubsub")}


async def test_a_killed_holder_is_taken_over_before_its_lease_lapses(
    spawn: Any, server: aioredis.Redis, redis_namespace: str
) -> None:
    a, b = await spawn(), await spawn()
    await paused_holder_kept_killed_one_taken_over(a, b, TTL)
    run = (await server.info("server"))["run_id"]
    assert await server.hget(_lease_key(redis_namespace), "presence_run") == run, "B's"
    c = await spawn()
    assert await c.call("acquire", holder="C", ttl=TTL) == {"epoch": None}, "B runs"
    await b.stop()  # closed without releasing: its subscription ends with its journal
    assert await c.call("acquire_when_free", holder="C", ttl=TTL) == {"epoch": 3}


async def test_another_server_run_proves_nothing(
    spawn: Any, server: aioredis.Redis, redis_namespace: str
) -> None:
    a, b = await spawn(), await spawn()
    assert await a.call("acquire", holder="A", ttl=TTL) == {"epoch": 1}
    run = (await server.info("server"))["run_id"]
    # as if the server had restarted after A subscribed (every subscription ends then)
    await server.hset(_lease_key(redis_namespace), "presence_run", "0" * 40)
    a.proc.kill()
    await a.proc.wait()
    channel = KEY_PREFIX.format(redis_namespace) + PRESENCE_CHANNEL + "A"
    async with asyncio.timeout(10):
        while (await server.pubsub_numsub(channel))[0][1]:
            await asyncio.sleep(0.01)
    for _ in range(3):
        assert await b.call("acquire", holder="B", ttl=TTL) == {"epoch": None}
    await server.hset(_lease_key(redis_namespace), "presence_run", run)
    assert await b.call("acquire", holder="B", ttl=TTL) == {"epoch": 2}


async def test_a_renewal_subscribes_again_after_its_subscription_ended(
    spawn: Any, server: aioredis.Redis, redis_namespace: str
) -> None:
    before = await _subscribers(server)
    a = await spawn()
    assert await a.call("acquire", holder="A", ttl=TTL) == {"epoch": 1}
    (presence,) = await _subscribers(server) - before
    assert await server.client_kill_filter(_id=presence) == 1
    key = _lease_key(redis_namespace)
    assert await a.call("renew", ttl=TTL) == {"epoch": 1}
    assert await server.hget(key, "presence_run") is None, "not counted: nothing recorded"
    assert await a.call("renew", ttl=TTL) == {"epoch": 1}
    assert await server.hget(key, "presence_run") is not None, "subscribed again"
    assert len(await _subscribers(server) - before) == 1

    b = await spawn()
    assert await b.call("acquire", holder="B", ttl=TTL) == {"epoch": None}, "A holds it again"
    a.proc.kill()
    await a.proc.wait()
    assert await b.call("acquire_when_free", holder="B", ttl=TTL) == {"epoch": 2}


@pytest.fixture
async def restricted_url(redis_url: str, server: aioredis.Redis) -> AsyncIterator[Any]:
    """``restricted_url(*rules)``: the URL of a new ACL user with those rules (deleted after)."""
    users: list[str] = []

    async def make(*rules: str) -> str:
        user = f"mawex-test-{uuid.uuid4().hex[:8]}"
        await server.acl_setuser(user, enabled=True, passwords=["+secret"], reset_keys=True)
        await server.execute_command("ACL", "SETUSER", user, *rules)
        users.append(user)
        return redis_url.replace("redis://", f"redis://{user}:secret@", 1)

    yield make
    if users:
        await server.acl_deluser(*users)


@pytest.mark.parametrize(
    "rules",
    [
        pytest.param(("~*", "&*", "+@all", "-info", "-pubsub"), id="no INFO or PUBSUB"),
        pytest.param(("~*", "resetchannels", "+@all"), id="no channel"),
    ],
)
async def test_a_user_denied_presence_gets_leases_that_lapse_and_one_warning(
    restricted_url: Any,
    redis_namespace: str,
    server: aioredis.Redis,
    caplog: pytest.LogCaptureFixture,
    rules: tuple[str, ...],
) -> None:
    url = await restricted_url(*rules)
    a = open_journal(url, namespace=redis_namespace)
    b = open_journal(url, namespace=redis_namespace)
    await a.open()
    await b.open()
    try:
        with caplog.at_level(logging.INFO, logger="mawex.journal"):
            lease = await a.acquire("A", TTL, None)
            assert lease is not None and lease.epoch == 1
            for _ in range(3):
                lease = await a.renew(lease, TTL)
                assert await b.acquire("B", TTL, None) is None
        assert await server.hget(_lease_key(redis_namespace), "presence_run") is None
        await a.close()  # A gone, but nothing says so: B waits for the lease
        assert await b.acquire("B", TTL, None) is None
    finally:
        await a.close()
        await b.close()
    failed = [
        getattr(r, "holder", None)
        for r in caplog.records
        if getattr(r, "action", None) == "presence_lock_failed"
    ]
    assert failed.count("A") == 1, "said once, not at every renewal"
