"""Busy polling: an event loop keeps polling for a while after work instead of sleeping.

An idle process sleeps in ``epoll_wait``; the next request or message must then
wake it, which on a virtual machine costs tens of microseconds per hop (the idle
virtual CPU halts and is woken by an interrupt) and runs on colder caches. A
:class:`BusyPoll` kicked after work keeps one callback scheduled on the loop until
its window has passed: while a callback is ready, the loop polls its sockets with a
zero timeout, so whatever arrives in the window is handled at once. The master
kicks it after each engine turn that changed the state, an ``AsyncClient`` with
``busy_poll`` after each request it sends.

A poll that finds the loop idle (the previous one came back within
:data:`IDLE_ITERATION_S`: nothing else ran in between) yields the CPU
(``sched_yield``) to any other thread or process ready to run on it: a polling
process delays the others sharing its core by a poll at most, and a core it keeps
busy wakes them without an interrupt. A loop with work does not yield (a yield per
iteration would hand the core back and forth under load). It trades CPU (up to one
core while traffic is sparse) for latency; under sustained load the loop never
sleeps anyway and it costs next to nothing.
"""

from __future__ import annotations

import asyncio
import os
import time

#: Longest window accepted: beyond it, polling is a spinning core, not a latency tool.
MAX_WINDOW_S = 1.0
#: A loop iteration shorter than this ran nothing but the poll (an idle one takes
#: about a microsecond): the next poll yields the CPU.
IDLE_ITERATION_S = 5e-6


def check_window(window: float) -> float:
    """``window`` if it is a usable busy-poll window in seconds (0 is off), else ValueError."""
    if not 0 <= window <= MAX_WINDOW_S:
        raise ValueError(f"a busy-poll window is 0 (off) to {MAX_WINDOW_S} s, not {window!r}")
    return window


class BusyPoll:
    """Keeps the running loop polling for ``window`` seconds after each :meth:`kick`."""

    __slots__ = ("_deadline", "_last_poll", "_polled_s", "_polling", "_since", "polls", "window")

    def __init__(self, window: float) -> None:
        if not check_window(window):
            raise ValueError("a busy poll needs a window above 0 s")
        self.window = window
        #: Polls made so far (one per loop iteration while polling).
        self.polls = 0
        self._deadline = 0.0
        self._polling = False
        self._since = 0.0
        self._polled_s = 0.0
        self._last_poll = 0.0

    @property
    def polling(self) -> bool:
        """Whether the loop is being kept awake now."""
        return self._polling

    @property
    def seconds(self) -> float:
        """Time spent polling so far: what it cost, at most, in CPU."""
        if self._polling:
            return self._polled_s + time.monotonic() - self._since
        return self._polled_s

    def kick(self) -> None:
        """Poll until ``window`` seconds from now (call it on the loop, after work)."""
        now = time.monotonic()
        self._deadline = now + self.window
        if not self._polling:
            self._polling = True
            self._since = now
            asyncio.get_running_loop().call_soon(self._poll)

    def _poll(self) -> None:
        self.polls += 1
        now = time.monotonic()
        if now - self._last_poll < IDLE_ITERATION_S:
            os.sched_yield()
        self._last_poll = now
        if now < self._deadline:
            asyncio.get_running_loop().call_soon(self._poll)
        else:
            self._polling = False
            self._polled_s += now - self._since
