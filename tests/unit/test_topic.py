"""The result topic's in-memory side: publishing and waking long polls."""

from __future__ import annotations

import asyncio

from mawex.core import events as ev
from mawex.journal.base import Record
from mawex.journal.memory import MemoryJournal
from mawex.master.topic import Topic


def _completed(offset: int, topic: int) -> Record:
    event = ev.Completed(group="g", id=f"t{topic}", attempt=1, result=ev.Raw(b"1"), at=1.0)
    return Record(offset, topic, 1.0, ev.encode(event))


async def test_a_publish_wakes_a_waiting_long_poll() -> None:
    topic = Topic(MemoryJournal())
    waiting = asyncio.create_task(topic.wait(1, 5.0))
    await asyncio.sleep(0)
    assert topic.subscribers == 1 and not waiting.done()
    topic.publish([_completed(1, 1)])
    assert await asyncio.wait_for(waiting, 2.0) is True
    assert topic.subscribers == 0
    bodies, next_offset = await topic.read(1, 10)
    assert next_offset == 2 and bodies[0].startswith(b'{"offset":1,')


async def test_a_publish_with_nobody_waiting_schedules_nothing() -> None:
    topic = Topic(MemoryJournal())
    before = asyncio.all_tasks()
    topic.publish([_completed(1, 1), _completed(2, 2)])
    assert asyncio.all_tasks() == before
    # a long poll that starts afterwards finds the events without being woken
    assert await asyncio.wait_for(topic.wait(2, 5.0), 1.0) is True
    assert await topic.wait(3, 0.01) is False


async def test_records_already_published_are_not_added_again() -> None:
    """As a publish that runs after a reset from a rebuilt state, which holds them."""
    topic = Topic(MemoryJournal())
    topic.publish([_completed(1, 1), _completed(2, 2)])
    topic.reset(3)
    topic.publish([_completed(2, 2)])
    topic.publish([_completed(3, 3)])
    bodies, next_offset = await topic.read(3, 10)
    assert next_offset == 4 and len(bodies) == 1 and bodies[0].startswith(b'{"offset":3,')
    assert [offset for offset, _ in topic._recent] == [3]
