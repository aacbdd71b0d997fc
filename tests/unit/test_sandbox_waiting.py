"""``sandbox.waiting.wait_any``: the first of several futures, or a deadline."""

from __future__ import annotations

import asyncio

import pytest

from mawex.sandbox.waiting import wait_any


async def test_returns_when_any_one_is_done() -> None:
    loop = asyncio.get_running_loop()
    for which in range(3):
        futures = [loop.create_future() for _ in range(3)]
        loop.call_later(0.01, futures[which].set_result, which)
        await asyncio.wait_for(wait_any(*futures), 5)
        assert [f.done() for f in futures] == [i == which for i in range(3)]
        assert not any(f._callbacks for f in futures)  # type: ignore[attr-defined]


async def test_returns_at_once_when_one_is_already_done() -> None:
    loop = asyncio.get_running_loop()
    done, pending = loop.create_future(), loop.create_future()
    done.set_result(None)
    await asyncio.wait_for(wait_any(pending, done), 0.5)
    assert not pending._callbacks  # type: ignore[attr-defined]


async def test_returns_after_the_timeout_with_nothing_done() -> None:
    loop = asyncio.get_running_loop()
    one, other = loop.create_future(), loop.create_future()
    started = loop.time()
    await asyncio.wait_for(wait_any(one, other, timeout=0.05), 5)
    assert loop.time() - started >= 0.04 and not one.done() and not other.done()
    assert not one._callbacks and not other._callbacks  # type: ignore[attr-defined]


async def test_cancelling_the_caller_leaves_the_futures_alone() -> None:
    loop = asyncio.get_running_loop()
    one, other = loop.create_future(), loop.create_future()
    waiting = asyncio.create_task(wait_any(one, other))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert not one.done() and not other.done()
    assert not one._callbacks and not other._callbacks  # type: ignore[attr-defined]
