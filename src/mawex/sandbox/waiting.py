"""Waiting for the first of several futures: what every sandbox does per attempt."""

from __future__ import annotations

import asyncio
from typing import Any


async def wait_any(*futures: asyncio.Future[Any], timeout: float | None = None) -> None:
    """Return once one of ``futures`` is done (at once if one already is), or after
    ``timeout`` seconds.

    ``asyncio.wait(..., return_when=FIRST_COMPLETED)`` without its sets and checks,
    which cost more than the rest of a small attempt's bookkeeping. Cancelling the
    caller leaves the futures alone, with no callback of ours left on them.
    """
    if any(future.done() for future in futures):
        return
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()

    def wake(_: object = None) -> None:
        if not waiter.done():
            waiter.set_result(None)

    for future in futures:
        future.add_done_callback(wake)
    timer = None if timeout is None else loop.call_later(timeout, wake)
    try:
        await waiter
    finally:
        for future in futures:
            future.remove_done_callback(wake)
        if timer is not None:
            timer.cancel()
