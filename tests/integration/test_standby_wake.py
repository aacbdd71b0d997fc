"""A standby asked for a leader polls the lease at once instead of on its schedule."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest

from mawex.core.decide import NewTask
from mawex.errors import NotLeader
from mawex.journal import open_journal
from mawex.master import leadership
from mawex.master.engine import Engine, EngineSettings


async def test_a_standby_asked_for_a_leader_takes_a_dead_leaders_lease_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(leadership, "STANDBY_POLL_S", 60.0)  # no poll on schedule here
    url = f"sqlite:///{tmp_path / 'j.db'}?synchronous=normal"
    dead = open_journal(url)
    await dead.open()
    assert await dead.acquire("dead", 600, None) is not None
    standby = Engine(open_journal(url), EngineSettings(lease_ttl=600))
    await standby.start()
    try:
        async with asyncio.timeout(10):  # its first poll found the lease held
            while standby.leader_seen is None:
                await asyncio.sleep(0.005)
        await dead.close()  # its lease stands; its presence lock is gone, as with kill -9
        await asyncio.sleep(0.3)
        assert not standby.is_leader, "no poll yet: the next is a minute away"
        task = NewTask(group="g", id="t1", payload=msgspec.Raw(b"1"))
        with pytest.raises(NotLeader):
            await standby.submit(task)  # a client looked for a leader here
        async with asyncio.timeout(10):
            while not standby.is_leader:
                await asyncio.sleep(0.005)
        assert standby.lease is not None and standby.lease.epoch == 2
        await standby.submit(task)
    finally:
        await standby.stop()
