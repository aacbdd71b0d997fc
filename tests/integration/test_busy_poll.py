"""Busy polling: the loop keeps polling after work for the window, and only then sleeps."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import msgspec
import pytest

import mawex
from mawex.busy_poll import BusyPoll
from mawex.core.decide import NewTask
from mawex.errors import ConfigError
from mawex.journal import open_journal
from mawex.master.engine import Engine, EngineSettings

_FLOAT_SLACK = 1e-9


async def _until(predicate: object, timeout: float = 10.0) -> None:
    assert callable(predicate)
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


async def test_a_kick_keeps_the_loop_polling_for_the_window_then_it_sleeps() -> None:
    poll = BusyPoll(0.05)
    assert not poll.polling and poll.polls == 0 and poll.seconds == 0
    poll.kick()
    assert poll.polling
    # a single sleep of the whole window: the loop goes on polling underneath it
    await asyncio.sleep(0.05)
    during = poll.polls
    assert during > 2, during  # it kept rescheduling itself, not one call and done
    await _until(lambda: not poll.polling)
    stopped_at, spent = poll.polls, poll.seconds
    # polled until now >= since + window; now - since may round a hair below the window
    assert spent >= 0.05 - _FLOAT_SLACK
    await asyncio.sleep(0.05)
    assert (poll.polls, poll.seconds) == (stopped_at, spent)  # asleep again: nothing polls
    poll.kick()
    poll.kick()  # a kick while polling moves the deadline, it adds no second poller
    await _until(lambda: not poll.polling)
    assert poll.seconds >= spent + 0.05 - _FLOAT_SLACK


async def test_a_poll_yields_the_cpu_only_while_the_loop_is_idle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    yields = 0

    def counted_yield() -> None:
        nonlocal yields
        yields += 1

    monkeypatch.setattr(os, "sched_yield", counted_yield)
    poll = BusyPoll(0.02)
    poll.kick()
    await _until(lambda: not poll.polling)
    assert yields > poll.polls // 2, (yields, poll.polls)  # idle: (nearly) every poll yields

    loop = asyncio.get_running_loop()
    busy_until = time.monotonic() + 0.04  # busy past the window

    def work() -> None:  # a loop with work: every iteration runs this for 50 µs
        spin_until = time.monotonic() + 50e-6
        while time.monotonic() < spin_until:
            pass
        if time.monotonic() < busy_until:
            loop.call_soon(work)

    yields = 0
    polls_before = poll.polls
    loop.call_soon(work)
    poll.kick()
    await _until(lambda: not poll.polling and time.monotonic() > busy_until)
    busy_polls = poll.polls - polls_before
    assert busy_polls > 20 and yields <= 2, (busy_polls, yields)


@pytest.mark.parametrize("window", [0.0, -0.001, 1.5, float("nan")])
def test_a_window_out_of_range_is_refused(window: float) -> None:
    with pytest.raises(ValueError, match="busy"):
        BusyPoll(window)


def test_local_master_refuses_a_bad_window_before_starting() -> None:
    with pytest.raises(ConfigError, match="busy-poll window"):
        mawex.LocalMaster("memory://", busy_poll=-1)


async def test_the_engine_polls_after_turns_that_change_the_state_only(tmp_path: Path) -> None:
    journal = open_journal(f"sqlite:///{tmp_path / 'j.db'}?synchronous=normal")
    engine = Engine(journal, EngineSettings(lease_ttl=0.6, tick_s=0.01, busy_poll_s=0.02))
    await engine.start()
    try:
        await _until(lambda: engine.is_leader)
        poll = engine.busy_poll
        assert poll is not None and poll.window == 0.02
        # turns that only run timers (one every 10 ms here) do not keep the loop awake,
        # nor do commands that change nothing (as a heartbeat or a read)
        await asyncio.sleep(0.1)
        assert await engine.call(lambda state, now: len(state.tasks)) == 0
        assert poll.polls == 0 and not poll.polling
        await engine.submit(NewTask(group="g", id="t1", payload=msgspec.Raw(b"1")))
        assert poll.polling
        await _until(lambda: not poll.polling)
        assert poll.polls > 0 and poll.seconds >= 0.02 - _FLOAT_SLACK
    finally:
        await engine.stop()
    assert Engine(journal, EngineSettings()).busy_poll is None  # off by default
