"""Leadership in-process: one leader, standbys that redirect, hand-over, fencing, replay."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest

from mawex.core.decide import NewTask
from mawex.errors import JournalError, NotLeader
from mawex.journal import open_journal
from mawex.journal.base import Journal, Record, Snapshot
from mawex.journal.memory import MemoryJournal
from mawex.master.engine import Engine, EngineSettings

TTL = 0.6


def _task(id: str, group: str = "g") -> NewTask:
    return NewTask(group=group, id=id, payload=msgspec.Raw(b'{"n":1}'))


@pytest.fixture
def journal_factory(tmp_path: Path) -> Callable[[], Journal]:
    url = f"sqlite:///{tmp_path / 'j.db'}?synchronous=normal"
    return lambda: open_journal(url)


@pytest.fixture
async def engines(journal_factory: Callable[[], Journal]) -> AsyncIterator[list[Engine]]:
    started: list[Engine] = []
    for name in ("a", "b"):
        engine = Engine(
            journal_factory(),
            EngineSettings(advertise=f"http://{name}.invalid:1", lease_ttl=TTL, tick_s=0.05),
        )
        await engine.start()
        started.append(engine)
    yield started
    for engine in started:
        if engine.role != "stopped":
            await engine.stop()


async def _leader(engines: list[Engine], exclude: Engine | None = None) -> Engine:
    async with asyncio.timeout(TTL * 10):
        while True:
            leaders = [e for e in engines if e.is_leader and e is not exclude]
            if leaders:
                assert len([e for e in engines if e.is_leader]) == 1
                return leaders[0]
            await asyncio.sleep(0.02)


async def test_exactly_one_leader_and_standby_redirects(engines: list[Engine]) -> None:
    leader = await _leader(engines)
    standby = next(e for e in engines if e is not leader)
    await asyncio.sleep(TTL)  # a whole lease period: still one leader
    assert leader.is_leader and not standby.is_leader
    with pytest.raises(NotLeader) as info:
        await standby.submit(_task("t1"))
    assert info.value.leader == leader.settings.advertise
    assert await leader.submit(_task("t1")) is False


async def test_clean_stop_hands_over_at_once_and_state_survives(engines: list[Engine]) -> None:
    leader = await _leader(engines)
    for i in range(20):
        await leader.submit(_task(f"t{i}"))
    standby = next(e for e in engines if e is not leader)
    loop = asyncio.get_running_loop()
    stopped_at = loop.time()
    await leader.stop()
    await _leader([standby])
    # released lease: no TTL wait (the standby polls every 0.2 s)
    assert loop.time() - stopped_at < TTL
    assert standby.epoch > 1
    assert standby.state.pending_count("g") == 20
    assert await standby.submit(_task("t0")) is True  # idempotency survives failover


async def test_deposed_leader_cannot_append_and_steps_down(
    journal_factory: Callable[[], Journal],
) -> None:
    old = Engine(journal_factory(), EngineSettings(advertise="http://old.invalid:1", lease_ttl=TTL))
    await old.start()
    await old.wait_leader(5)
    await old.submit(_task("before"))
    # the old leader "pauses": its lease loop stops renewing, as under SIGSTOP
    for task in old._tasks:
        task.cancel()
    new = Engine(journal_factory(), EngineSettings(advertise="http://new.invalid:1", lease_ttl=TTL))
    await new.start()
    try:
        await new.wait_leader(TTL * 5)
        assert new.epoch > old.epoch
        # the old leader wakes up and tries to write: fenced, nothing lands
        with pytest.raises(NotLeader):
            await old.submit(_task("from-the-past"))
        await asyncio.sleep(0.05)
        assert not old.is_leader
        await new.submit(_task("after"))
        await new.catch_up()
        assert ("g", "from-the-past") not in new.state.tasks
        assert ("g", "before") in new.state.tasks
        records = await new.journal.read(1, 1000)
        assert all(b"from-the-past" not in r.body for r in records)
    finally:
        await new.stop()
        await old.stop()


async def test_standby_follows_the_journal_and_serves_results(engines: list[Engine]) -> None:
    leader = await _leader(engines)
    standby = next(e for e in engines if e is not leader)
    for i in range(5):
        await leader.submit(_task(f"t{i}"))
    await leader.cancel("g", "t3")
    async with asyncio.timeout(5):
        while standby.state.offset < leader.state.offset:
            await asyncio.sleep(0.05)
    assert standby.get("g", "t3")["status"] == "cancelled"
    events, next_offset = await standby.topic.read(0, 100)
    assert [msgspec.json.decode(e)["type"] for e in events] == ["cancelled"]
    assert next_offset == 2


async def test_snapshot_and_trim_then_replay(journal_factory: Callable[[], Journal]) -> None:
    settings = EngineSettings(lease_ttl=TTL, snapshot_every=100, retain_topic_events=5)
    engine = Engine(journal_factory(), settings)
    await engine.start()
    await engine.wait_leader(5)
    for i in range(250):
        await engine.submit(_task(f"t{i}"))
    for i in range(0, 250, 10):
        await engine.cancel("g", f"t{i}")
    offset = engine.state.offset
    await engine.stop()
    journal = journal_factory()
    await journal.open()
    snapshot = await journal.load_snapshot()
    assert snapshot is not None and snapshot.offset >= 200
    remaining = await journal.read(1, 10_000)
    assert remaining[0].offset <= snapshot.offset  # retained topic records before it
    await journal.close()
    again = Engine(journal_factory(), settings)
    await again.start()
    try:
        assert again.state.offset == offset
        assert again.state.pending_count("g") == 225
        assert again.get("g", "t240")["status"] == "cancelled"
    finally:
        await again.stop()


@pytest.mark.parametrize("gc_freeze", [True, False])
async def test_rebuild_with_the_collector_frozen_at_start(
    journal_factory: Callable[[], Journal], gc_freeze: bool
) -> None:
    """``gc_freeze``: the same state from snapshot + replay, the collector on again after
    it, the rebuilt state out of its reach (and nothing frozen without the setting)."""
    settings = EngineSettings(lease_ttl=TTL, snapshot_every=100)
    engine = Engine(journal_factory(), settings)
    await engine.start()
    await engine.wait_leader(5)
    for i in range(130):  # a snapshot at ~100 events, then records after it
        await engine.submit(_task(f"t{i}", group=f"g{i % 3}"))
    await engine.cancel("g1", "t1")
    before = engine.state_view()["groups"]
    offset = engine.state.offset
    await engine.stop()

    gc.unfreeze()
    assert gc.isenabled()
    again = Engine(journal_factory(), EngineSettings(lease_ttl=TTL, gc_freeze=gc_freeze))
    try:
        await again.start()
        frozen = gc.get_freeze_count()
        tasks = again.state.tasks
        scanned = any(obj is tasks for obj in gc.get_objects())  # frozen ones are not listed
        assert gc.isenabled()
        assert again.state.offset == offset
        assert again.state_view()["groups"] == before
        assert again.get("g1", "t1")["status"] == "cancelled"
        assert (frozen > 0, scanned) == (gc_freeze, not gc_freeze)
    finally:
        gc.unfreeze()
        await again.stop()


async def test_masters_announce_themselves_and_see_each_other(engines: list[Engine]) -> None:
    leader = await _leader(engines)
    standby = next(e for e in engines if e is not leader)
    async with asyncio.timeout(TTL * 10):
        while True:
            views = [e.state_view() for e in engines]
            if all(len(v["masters"]) == 2 for v in views):
                break
            await asyncio.sleep(0.02)
    for view in views:
        assert [(m["url"], m["role"], m["holder"]) for m in view["masters"]] == [
            (leader.settings.advertise, "leader", leader.holder),
            (standby.settings.advertise, "standby", standby.holder),
        ]
        assert view["standbys"] == [standby.settings.advertise]
        assert all(0 <= m["seen_s_ago"] < TTL * 2 for m in view["masters"])
        assert view["lease_holder"] == leader.holder
        assert view["lease_expires_in_s"] > 0
    # a clean stop withdraws the announcement at once; the standby leads and is alone
    await leader.stop()
    new = await _leader([standby])
    async with asyncio.timeout(TTL * 10):
        while [m["holder"] for m in new.state_view()["masters"]] != [new.holder]:
            await asyncio.sleep(0.02)
    assert new.state_view()["standbys"] == []
    async with asyncio.timeout(TTL * 10):
        while [(m.holder, m.role) for m in await new.journal.members()] != [(new.holder, "leader")]:
            await asyncio.sleep(0.02)


async def test_a_silent_master_drops_out_of_the_members(
    journal_factory: Callable[[], Journal],
) -> None:
    from mawex.master.leadership import MEMBER_TTL_FACTOR

    a = Engine(journal_factory(), EngineSettings(advertise="http://a.invalid:1", lease_ttl=TTL))
    b = Engine(journal_factory(), EngineSettings(advertise="http://b.invalid:1", lease_ttl=TTL))
    await a.start()
    await a.wait_leader(5)
    await b.start()
    try:
        async with asyncio.timeout(TTL * 10):
            while len(a.state_view()["masters"]) < 2:
                await asyncio.sleep(0.02)
        # b goes silent (as under SIGSTOP): its announcement lapses
        for task in b._tasks:
            task.cancel()
        await asyncio.sleep(0.05)
        async with asyncio.timeout(TTL * (MEMBER_TTL_FACTOR + 3)):
            while len(a.state_view()["masters"]) > 1:
                await asyncio.sleep(0.05)
        assert a.state_view()["standbys"] == []
    finally:
        await b.stop()
        await a.stop()


async def test_epochs_in_the_journal_follow_the_leaders(engines: list[Engine]) -> None:
    first = await _leader(engines)
    await first.submit(_task("a"))
    first_epoch = first.epoch
    await first.stop()
    second = await _leader(engines, exclude=first)
    await second.submit(_task("b"))
    records = await second.journal.read(1, 1000)
    assert [r.epoch for r in records] == [first_epoch, second.epoch]
    assert first_epoch < second.epoch


async def test_an_unexpected_error_in_the_loop_steps_down_and_recovers(
    journal_factory: Callable[[], Journal],
) -> None:
    """A leader whose loop died would renew its lease forever and serve nothing."""

    class Glitch(RuntimeError):
        pass

    engine = Engine(journal_factory(), EngineSettings(lease_ttl=TTL, tick_s=0.05))
    await engine.start()
    await engine.wait_leader(5)
    await engine.submit(_task("before"))
    append = engine.journal.append
    calls = 0

    async def glitchy(records: Any, epoch: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise Glitch("not a JournalError")
        await append(records, epoch)

    engine.journal.append = glitchy  # type: ignore[method-assign]
    try:
        with pytest.raises(NotLeader):
            await asyncio.wait_for(engine.submit(_task("lost")), 5)
        await engine.wait_leader(TTL * 10)
        async with asyncio.timeout(TTL * 10):
            while True:
                try:
                    assert await engine.submit(_task("after")) is False
                    break
                except NotLeader:
                    await asyncio.sleep(0.05)
        assert ("g", "lost") not in engine.state.tasks
        assert {("g", "before"), ("g", "after")} <= engine.state.tasks.keys()
    finally:
        await engine.stop()


async def test_a_lagging_standby_does_not_skip_records_trimmed_between_kept_topic_records(
    journal_factory: Callable[[], Journal],
) -> None:
    """The standby's next record is a retained topic record, the ones after it were trimmed.

    Reading on from there returns kept topic records with gaps between them; applying
    them as if contiguous would skip the trimmed submissions (tasks silently lost).
    """
    settings = EngineSettings(lease_ttl=30, tick_s=0.05)
    leader = Engine(journal_factory(), settings)
    await leader.start()
    await leader.wait_leader(5)
    standby = Engine(journal_factory(), settings)
    await standby.start()
    for task in standby._tasks:  # no background tailing: the test drives catch_up()
        task.cancel()
    try:
        await leader.submit(_task("t1"))  # 1: accepted
        await standby.catch_up()
        assert standby.state.offset == leader.state.offset
        await leader.cancel("g", "t1")  # cancelled: a topic record, kept by trim
        await leader.submit(_task("t2"))  # accepted: trimmed below the snapshot
        await leader.submit(_task("t3"))  # accepted: trimmed
        await leader.cancel("g", "t3")  # cancelled: kept
        await leader.save_snapshot()
        kept = [(r.offset, r.topic is not None) for r in await leader.journal.read(1, 100)]
        assert kept[0] == (standby.state.offset + 1, True)
        assert any(not is_topic for _, is_topic in kept) is False
        await leader.submit(_task("t4"))
        await standby.catch_up()
        assert standby.state.offset == leader.state.offset
        assert standby.state.tasks.keys() == leader.state.tasks.keys()
        assert standby.get("g", "t2")["status"] == "pending"
        assert standby.get("g", "t3")["status"] == "cancelled"
    finally:
        await standby.stop()
        await leader.stop()


async def test_a_standby_that_fails_to_apply_a_record_recovers_and_can_take_over(
    engines: list[Engine],
) -> None:
    leader = await _leader(engines)
    standby = next(e for e in engines if e is not leader)
    catch_up = standby.catch_up
    failures = 0

    async def broken_once() -> int:
        nonlocal failures
        if failures == 0:
            failures += 1
            raise KeyError("a record the state cannot apply")
        return await catch_up()

    standby.catch_up = broken_once  # type: ignore[method-assign]
    await leader.submit(_task("t1"))
    async with asyncio.timeout(TTL * 10):
        while failures == 0 or standby.state.offset < leader.state.offset:
            await asyncio.sleep(0.02)
    await leader.stop()
    await _leader([standby])
    assert ("g", "t1") in standby.state.tasks


class FlakyJournal(MemoryJournal):
    """A memory journal whose appends and snapshot loads can be made to fail."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_appends = 0
        self.fail_loads = 0

    async def append(self, records: Sequence[Record], epoch: int) -> None:
        if self.fail_appends:
            self.fail_appends -= 1
            raise JournalError("store unreachable")
        await super().append(records, epoch)

    async def load_snapshot(self) -> Snapshot | None:
        if self.fail_loads:
            self.fail_loads -= 1
            raise JournalError("store unreachable")
        return await super().load_snapshot()


async def test_failed_append_never_leaves_phantom_events_in_the_state() -> None:
    journal = FlakyJournal()
    engine = Engine(journal, EngineSettings(lease_ttl=TTL, tick_s=0.05))
    await engine.start()
    try:
        await engine.wait_leader(5)
        await engine.submit(_task("kept"))
        # the append fails and so does the rebuild right after: the state that holds
        # the unjournalled "phantom" must not survive into the next leadership
        journal.fail_appends = 1
        journal.fail_loads = 1
        first_epoch = engine.epoch
        with pytest.raises((NotLeader, JournalError)):
            await engine.submit(_task("phantom"))
        async with asyncio.timeout(TTL * 10):
            while not (engine.is_leader and engine.epoch > first_epoch):
                await asyncio.sleep(0.02)
        assert ("g", "phantom") not in engine.state.tasks
        assert engine.state.offset == await journal.last_offset()
        assert await engine.submit(_task("after")) is False
        await engine.cancel("g", "after")
        events, _ = await engine.topic.read(0, 10)
        assert [msgspec.json.decode(e)["offset"] for e in events] == [1]
        assert [msgspec.json.decode(e)["id"] for e in events] == ["after"]
    finally:
        await engine.stop()


async def test_the_engines_own_snapshots_trim_in_the_background(
    journal_factory: Callable[[], Journal],
) -> None:
    settings = EngineSettings(lease_ttl=30, tick_s=0.05, snapshot_every=20, retain_topic_events=1)
    leader = Engine(journal_factory(), settings)
    await leader.start()
    await leader.wait_leader(5)
    try:
        for i in range(45):  # 45 accepted records: two snapshots on the way
            await leader.submit(_task(f"t{i}"))
        assert leader.stats["snapshots"] == 2
        async with asyncio.timeout(10):
            while (await leader.journal.read(1, 1))[0].offset < 40:
                await asyncio.sleep(0.01)  # the second snapshot's trim, run behind the turns
        await leader.submit(_task("after"))
        journal = journal_factory()
        await journal.open()
        restarted = Engine(journal, settings)
        await restarted.rebuild()
        assert restarted.state.tasks.keys() == leader.state.tasks.keys()
        await journal.close()
    finally:
        await leader.stop()


async def test_callers_of_a_turn_cut_short_by_a_stop_hear_so(tmp_path: Path) -> None:
    """A master stopping (or stepping down) while a turn's append is on the journal
    thread: the turn's callers get NotLeader instead of waiting forever."""
    engine = Engine(open_journal(f"sqlite:///{tmp_path / 'j.db'}"), EngineSettings(lease_ttl=30))
    await engine.start()
    try:
        await engine.wait_leader(5)
        batch = [_task(f"b{i}") for i in range(5000)]  # fsync'd on the journal thread
        call = asyncio.ensure_future(engine.submit_batch(batch))
        async with asyncio.timeout(10):
            while ("g", "b0") not in engine.state.tasks:  # decided: its append is under way
                await asyncio.sleep(0)
    finally:
        await engine.stop()
    with pytest.raises(NotLeader):  # the append may still land, as with any cancelled call
        await asyncio.wait_for(call, 5)
