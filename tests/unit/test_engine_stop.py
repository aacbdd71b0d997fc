"""A leader's stop, as the engine's callers see it."""

from __future__ import annotations

import asyncio

import msgspec

from mawex.core.decide import NewTask
from mawex.errors import NotLeader
from mawex.journal.memory import MemoryJournal
from mawex.master.engine import Engine, EngineSettings


async def test_no_call_is_left_waiting_by_a_stop() -> None:
    """Calls made at any point of a leader's stop are answered (run, or refused with
    ``not_leader``): none is queued for a loop that no longer runs."""
    engine = Engine(MemoryJournal(), EngineSettings(lease_ttl=5.0, tick_s=0.05))
    await engine.start()
    await engine.wait_leader(10)
    stopping = asyncio.ensure_future(engine.stop())
    calls = []
    while not stopping.done():
        task = NewTask(group="g", id=f"t{len(calls)}", payload=msgspec.Raw(b"1"))
        calls.append(asyncio.ensure_future(engine.submit(task)))
        await asyncio.sleep(0)
    outcomes = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 5)
    assert len(calls) > 1
    assert all(o is False or isinstance(o, NotLeader) for o in outcomes), outcomes
