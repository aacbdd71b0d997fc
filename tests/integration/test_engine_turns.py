"""Turns run by the caller: a command on an idle engine is decided and appended on
the caller's stack, and nothing else may interleave with it."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from mawex.core.decide import NewTask
from mawex.errors import NotLeader
from mawex.journal import open_journal
from mawex.journal.sqlite import INLINE_FSYNC_RECORDS
from mawex.master.engine import Engine, EngineSettings


def _task(id: str) -> NewTask:
    return NewTask(group="g", id=id, payload=msgspec.Raw(b"{}"))


async def _engine(path: Path, synchronous: str) -> Engine:
    engine = Engine(
        open_journal(f"sqlite:///{path}?synchronous={synchronous}"),
        EngineSettings(lease_ttl=0.6, tick_s=0.05),
    )
    await engine.start()
    await engine.wait_leader(5)
    return engine


@pytest.fixture
async def normal(tmp_path: Path) -> AsyncIterator[Engine]:
    engine = await _engine(tmp_path / "j.db", "normal")
    yield engine
    await engine.stop()


def _stored_ids(path: Path) -> list[str]:
    """The ids of the tasks accepted in the file, in journal order, read by another connection."""
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT body FROM mawex_records ORDER BY seq").fetchall()
    events = [msgspec.json.decode(body) for (body,) in rows]
    return [e["id"] for e in events if e.get("type") == "accepted"]


async def test_a_call_on_an_idle_engine_returns_durable_without_a_loop_pass(
    normal: Engine, tmp_path: Path
) -> None:
    await asyncio.sleep(0.1)  # the loop is parked, waiting for commands
    passes = 0

    def count_pass() -> None:
        nonlocal passes
        passes += 1

    asyncio.get_running_loop().call_soon(count_pass)
    assert await normal.submit(_task("t1")) is False
    assert passes == 0  # the loop never ran in between: the turn was the caller's
    assert _stored_ids(tmp_path / "j.db") == ["t1"]
    assert normal.get("g", "t1")["status"] == "pending"
    await asyncio.sleep(0)
    assert passes == 1


async def test_calls_queued_behind_a_callers_waiting_append_follow_it_in_order(
    tmp_path: Path,
) -> None:
    """An fsync'd batch too large to append on the loop goes on in a task: the calls
    that arrive meanwhile are queued, and each returns only once it is durable."""
    path = tmp_path / "j.db"
    engine = await _engine(path, "full")
    try:
        batch = [_task(f"b{i}") for i in range(INLINE_FSYNC_RECORDS + 1)]
        returned: list[tuple[str, list[str]]] = []

        async def submit_batch() -> None:
            await engine.submit_batch(batch)
            returned.append(("batch", _stored_ids(path)))

        async def submit(id: str) -> None:
            await engine.submit(_task(id))
            returned.append((id, _stored_ids(path)))

        batch_call = asyncio.ensure_future(submit_batch())
        await asyncio.sleep(0)  # the batch's turn has begun and waits for its append
        await asyncio.gather(batch_call, submit("s1"), submit("s2"))
        await submit("s3")
        expected = [t.id for t in batch] + ["s1", "s2", "s3"]
        assert _stored_ids(path) == expected
        assert engine.state.offset == await engine.journal.last_offset()
        for name, stored in returned:
            assert (name if name != "batch" else batch[-1].id) in stored
        assert returned[0][0] == "batch"
    finally:
        await engine.stop()


async def test_a_fenced_callers_turn_fails_and_leaves_nothing_behind(
    normal: Engine, tmp_path: Path
) -> None:
    path = tmp_path / "j.db"
    await normal.submit(_task("kept"))
    epoch = normal.epoch
    with sqlite3.connect(path) as conn:  # a newer master's epoch, as a takeover leaves it
        conn.execute("UPDATE mawex_lease SET epoch = epoch + 1")
    with pytest.raises(NotLeader):
        await normal.submit(_task("fenced"))
    assert _stored_ids(path) == ["kept"]
    async with asyncio.timeout(10):  # stepped down, rebuilt from the journal, leading again
        while not (normal.is_leader and normal.epoch > epoch + 1):
            await asyncio.sleep(0.02)
    assert ("g", "fenced") not in normal.state.tasks
    assert await normal.submit(_task("after")) is False
    assert _stored_ids(path) == ["kept", "after"]
