"""Waiting for a condition in tests: poll with a deadline, never sleep as synchronisation."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T | None],
    timeout: float,
    what: str,
    *,
    interval: float = 0.05,
    describe: Callable[[], object] | None = None,
) -> T:
    """Poll ``predicate`` until it returns something truthy (returned); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            seen = f"; last seen: {describe()}" if describe else ""
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}{seen}")
        time.sleep(interval)
