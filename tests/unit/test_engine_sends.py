"""What the engine does once a turn's events are durable, and in which order.

A real engine on a memory journal, with a worker session that records what the
engine queued on it and what it asked to be written at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from mawex.core import events as ev
from mawex.core.decide import NewTask
from mawex.journal.memory import MemoryJournal
from mawex.master.engine import Engine, EngineSettings
from mawex.wire import worker as wire


class RecordingSession:
    """Frames queued with ``send`` and those the engine had written with ``flush``."""

    def __init__(self) -> None:
        self.queued: list[wire.MasterMessage] = []
        self.written: list[wire.MasterMessage] = []

    def send(self, frame: bytes) -> None:
        self.queued.append(wire.decode_master_message(frame))

    def flush(self) -> None:
        self.written += self.queued
        self.queued = []

    def close(self, code: int, reason: str) -> None:
        pass


@pytest.fixture
async def engine() -> AsyncIterator[Engine]:
    engine = Engine(MemoryJournal(), EngineSettings(lease_ttl=5.0, tick_s=0.05))
    await engine.start()
    try:
        await engine.wait_leader(10)
        yield engine
    finally:
        await engine.stop()


async def check_in(engine: Engine, worker: str) -> RecordingSession:
    session = RecordingSession()
    await engine.worker_hello(wire.Hello(worker=worker, group="g", pod=worker), session)
    session.queued.clear()  # the welcome
    session.written.clear()
    return session


def task(id: str) -> NewTask:
    return NewTask(group="g", id=id, payload=msgspec.Raw(b"1"))


async def test_an_assignment_is_written_within_the_turn_that_made_it_durable(
    engine: Engine,
) -> None:
    session = await check_in(engine, "w1")
    await engine.submit(task("a"))
    # the submitter is answered after the turn: the worker's work is already written
    assert [(type(m), getattr(m, "id", None)) for m in session.written] == [(wire.Assign, "a")]
    assert session.queued == []


async def test_an_ack_goes_after_the_answer_to_those_waiting_for_the_task(
    engine: Engine,
) -> None:
    session = await check_in(engine, "w1")
    await engine.submit(task("a"))

    async def wait() -> tuple[str, list[type[wire.MasterMessage]]]:
        view = await engine.wait_terminal("g", "a", 10)
        return view["status"], [type(m) for m in session.queued + session.written]

    waiting = asyncio.ensure_future(wait())
    await asyncio.sleep(0)
    finished = wire.Finished(group="g", id="a", attempt=1, ok=True, result=msgspec.Raw(b"2"))
    engine.worker_message("w1", session, finished)
    # the waiter ran before the ack was sent; once sent, it was written at once
    assert await waiting == ("completed", [wire.Assign])
    for _ in range(3):
        await asyncio.sleep(0)
    assert [type(m) for m in session.written] == [wire.Assign, wire.Ack]
    assert session.queued == []


async def test_callers_resume_once_the_topic_has_their_events(engine: Engine) -> None:
    await check_in(engine, "w1")
    before = engine.topic.next
    await engine.submit(task("a"))  # accepted, then scheduled: a topic event
    assert engine.topic.next == before + 1
    bodies, _ = await engine.topic.read(before, 10)
    assert b'"type":"scheduled"' in bodies[0]


async def test_observers_see_each_commit_before_its_callers_resume(engine: Engine) -> None:
    seen: list[tuple[list[type[ev.Event]], float]] = []

    def observer(events: list[ev.Event], now: float, append_seconds: float) -> None:
        seen.append(([type(e) for e in events], append_seconds))

    engine.observers.append(observer)
    await engine.submit(task("a"))
    assert [types for types, _ in seen] == [[ev.Accepted]]
    await engine.submit(task("b"))
    assert [types for types, _ in seen] == [[ev.Accepted], [ev.Accepted]]
    assert all(seconds >= 0 for _, seconds in seen)
    assert sum(seconds for _, seconds in seen) == pytest.approx(engine.stats["append_seconds"])


async def test_observers_run_after_the_turn(engine: Engine) -> None:
    """Outside the engine's loop, once the turn's work for workers is written: a slow
    observer never delays it."""
    session = await check_in(engine, "w1")
    calls: list[tuple[asyncio.Task[Any] | None, int]] = []

    def observer(*_: Any) -> None:
        calls.append((asyncio.current_task(), len(session.written)))

    engine.observers.append(observer)
    await engine.submit(task("a"))
    assert calls == [(None, 1)]
