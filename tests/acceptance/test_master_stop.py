"""Regression: a master must stop on SIGTERM even if a worker frame arrives at that moment.

Seen end to end: ``stop_all`` sends SIGTERM to the workers and the master together; the
master logged ``master stopping`` and then hung (no ``lease released``) until SIGKILL,
about one run in twenty. An asyncio dump of the hung master showed its ``mawex-engine``
task *cancelling* yet still waiting in ``Engine._run`` → ``_Inbox.wait`` while
``Engine.stop`` → ``_stop_loop`` awaited it forever: ``_Inbox.wait`` uses
``asyncio.wait_for``, which on Python 3.11 returns normally (swallowing the
cancellation) when the awaited event is set just before the cancel is delivered, here by
the ``bye`` frames of the workers checking out.

This test reproduces that interleaving in process, deterministically, without timing:
a command is posted and the engine loop is cancelled in the same loop iteration.
"""

from __future__ import annotations

import asyncio
import sys

import pytest

from mawex.journal.memory import MemoryJournal
from mawex.master.engine import Engine, EngineSettings


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="asyncio.wait_for was fixed in 3.12")
async def test_engine_loop_stops_when_cancelled_as_a_command_arrives() -> None:
    engine = Engine(MemoryJournal(), EngineSettings(tick_s=30))
    await engine.start()
    loop_task = None
    try:
        await engine.wait_leader(10)
        loop_task = engine._loop_task
        assert loop_task is not None
        await engine.call(lambda state, now: None)  # one turn done: the loop waits again
        for _ in range(5):
            await asyncio.sleep(0)  # let it settle in _Inbox.wait (no timing involved)
        engine.post(lambda state, now: None)  # a worker frame arrives ...
        loop_task.cancel()  # ... as Engine.stop() cancels the loop
        done, _ = await asyncio.wait({loop_task}, timeout=2)
        assert loop_task in done, "the engine loop ignored its cancellation: stop() would hang"
        assert loop_task.cancelled()
    finally:
        if loop_task is not None and not loop_task.done():
            loop_task.cancel()  # no command races this one
            await asyncio.wait({loop_task}, timeout=2)
        async with asyncio.timeout(10):
            await engine.stop()
