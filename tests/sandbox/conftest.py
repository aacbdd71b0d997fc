"""Fixtures of the sandbox tests: forked sandboxes that are always closed, and process probes."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from mawex.model import Task
from mawex.sandbox.forked import ForkedSandbox

MakeSandbox = Callable[..., Coroutine[Any, Any, ForkedSandbox]]


def task(payload: object = None, id: str = "t1", attempt: int = 1) -> Task:
    return Task(id=id, group="g", payload=payload, attempt=attempt)


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def children_of(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (live ones)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] not in ("Z", "X"):
            found.append(int(entry))
    return found


def descendants_of(pid: int) -> list[int]:
    """Every live descendant of ``pid``."""
    result: list[int] = []
    frontier = [pid]
    while frontier:
        kids = children_of(frontier.pop())
        result += kids
        frontier += kids
    return result


def wait_dead(pids: list[int], timeout: float = 10.0) -> list[int]:
    """Wait until none of ``pids`` is alive; the ones still alive after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        left = [pid for pid in pids if alive(pid)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.02)


def _read(path: Path) -> str | None:
    return path.read_text() if path.exists() else None


async def wait_file(path: Path, timeout: float = 20.0) -> str:
    """Wait until ``path`` exists and return its text."""
    import asyncio

    deadline = time.monotonic() + timeout
    while (text := _read(path)) is None:
        if time.monotonic() >= deadline:
            raise AssertionError(f"{path} never appeared")
        await asyncio.sleep(0.02)
    return text


@pytest.fixture
async def make_sandbox() -> AsyncIterator[MakeSandbox]:
    """``await make_sandbox(ref, args=None, **options)``: a started ForkedSandbox, closed after."""
    sandboxes: list[ForkedSandbox] = []

    async def make(ref: str, args: dict[str, str] | None = None, **options: Any) -> ForkedSandbox:
        sandbox = ForkedSandbox(ref, args, **options)
        sandboxes.append(sandbox)
        await sandbox.start()
        return sandbox

    try:
        yield make
    finally:
        for sandbox in sandboxes:
            zygote = sandbox.zygote_pid
            family = descendants_of(zygote) if zygote else []
            await sandbox.close()
            left = wait_dead([*family, *([zygote] if zygote else [])])
            assert not left, f"processes left alive after close(): {left}"
