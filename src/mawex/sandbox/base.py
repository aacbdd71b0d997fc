"""The sandbox interface: where an executor's code runs. Workers know nothing else of sandboxes."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from mawex.model import Task


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one attempt ended.

    ``result`` is the JSON-encoded return value when ``ok``; ``error`` explains a
    failure. ``lingering`` is set when the attempt is over (timed out or
    cancelled) but its code could not be stopped and still runs: it completes
    when that code returns, and until then the pod stays busy.
    """

    ok: bool
    result: bytes = b"null"
    error: str | None = None
    lingering: Awaitable[None] | None = None

    @classmethod
    def success(cls, result: bytes) -> Outcome:
        return cls(ok=True, result=result)

    @classmethod
    def failure(cls, error: str, lingering: Awaitable[None] | None = None) -> Outcome:
        return cls(ok=False, error=error, lingering=lingering)


@runtime_checkable
class Sandbox(Protocol):
    """Runs one task at a time."""

    kind: str

    async def start(self) -> None:
        """Prepare (load the executor, start helper processes); raises ExecutorLoadError."""

    async def run(self, task: Task, timeout_s: float | None) -> Outcome:
        """Run one attempt to its end, within ``timeout_s`` if given; task errors never raise."""

    async def cancel(self, reason: str) -> None:
        """Stop the running attempt, if any: ``run`` then returns a failed Outcome."""

    async def close(self) -> None:
        """Stop everything the sandbox started; no process may outlive it."""


__all__ = ["Outcome", "Sandbox"]
