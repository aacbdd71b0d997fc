"""Tiny example executors: ``mawex worker mawex.examples.demo:echo ...``.

=========================  ==========================================================
``echo``                   returns the payload
``sleep`` (async)          sleeps ``payload["seconds"]`` without blocking the loop
``sleep_sync``             blocks its thread with ``time.sleep(payload["seconds"])``
``flaky``                  fails on attempt 1, succeeds on later attempts
``fail``                   always raises
``Record`` (class)         appends one JSON line per task to ``--arg path=FILE``
``Demo`` (class, async)    a few ms of fake work: sums and hashes the payload
=========================  ==========================================================

A number is accepted wherever ``{"seconds": n}`` is.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from typing import Any

from mawex.model import Task

__all__ = ["Demo", "Record", "echo", "fail", "flaky", "sleep", "sleep_sync"]


def _seconds(payload: Any) -> float:
    if isinstance(payload, dict):
        payload = payload.get("seconds", 0)
    return float(payload or 0)


def echo(task: Task) -> Any:
    """Return the payload unchanged."""
    return task.payload


async def sleep(task: Task) -> dict[str, float]:
    """Sleep ``payload["seconds"]`` asynchronously (cancellable)."""
    seconds = _seconds(task.payload)
    await asyncio.sleep(seconds)
    return {"slept": seconds}


def sleep_sync(task: Task) -> dict[str, float]:
    """Block for ``payload["seconds"]`` in the executor's thread (cannot be interrupted)."""
    seconds = _seconds(task.payload)
    time.sleep(seconds)
    return {"slept": seconds}


def flaky(task: Task) -> dict[str, Any]:
    """Fail on the first attempt, succeed on any later one."""
    if task.attempt == 1:
        raise RuntimeError(f"flaky: attempt {task.attempt} of {task.id} fails on purpose")
    return {"attempt": task.attempt, "payload": task.payload}


def fail(task: Task) -> None:
    """Always raise (with ``payload["error"]`` as the message, if given)."""
    message = task.payload.get("error") if isinstance(task.payload, dict) else None
    raise RuntimeError(message or f"task {task.id} fails on purpose")


class Record:
    """Append ``{"id","group","attempt","pod","start","end"}`` per task to ``path``.

    Built with ``--arg path=FILE [--arg pod=P]`` (else the pod is ``$MAWEX_POD``).
    The task sleeps ``payload["seconds"]`` (default 0) between start and end, so
    the file shows whether two tasks of one pod ever overlapped. Each line is one
    ``O_APPEND`` write, so several processes can share the file.
    """

    def __init__(self, path: str, pod: str | None = None) -> None:
        self.path = path
        self.pod = pod or os.environ.get("MAWEX_POD", "")

    def __call__(self, task: Task) -> dict[str, Any]:
        start = time.time()
        time.sleep(_seconds(task.payload))
        line = {
            "id": task.id,
            "group": task.group,
            "attempt": task.attempt,
            "pod": self.pod,
            "start": start,
            "end": time.time(),
        }
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(line) + "\n").encode())
        finally:
            os.close(fd)
        return line


class Demo:
    """The ``mawex demo`` executor: a few milliseconds of fake work per task.

    Returns the sum of the numbers in the payload and a short hash of it. A
    payload with ``"fail": true`` always fails; ``"fail_attempts": n`` fails the
    first ``n`` attempts (to show retries). ``--arg delay_ms=N`` sets the work time.
    """

    def __init__(self, delay_ms: str = "5") -> None:
        self.delay_s = float(delay_ms) / 1000

    async def __call__(self, task: Task) -> dict[str, Any]:
        payload = task.payload
        if isinstance(payload, dict):
            if payload.get("fail") or task.attempt <= int(payload.get("fail_attempts", 0)):
                raise ValueError(f"demo task {task.id} asked to fail (attempt {task.attempt})")
        await asyncio.sleep(self.delay_s)
        canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return {
            "sum": _sum(payload),
            "sha256": hashlib.sha256(canonical.encode()).hexdigest()[:16],
            "attempt": task.attempt,
        }


def _sum(value: Any) -> float:
    if isinstance(value, bool):
        return 0
    if isinstance(value, int | float):
        return value
    if isinstance(value, dict):
        return sum(_sum(v) for v in value.values())
    if isinstance(value, list):
        return sum(_sum(v) for v in value)
    return 0
