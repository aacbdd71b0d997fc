"""The ``local`` sandbox: the executor runs inside the worker process.

``async def`` executors run as asyncio tasks on the worker's loop and are
cancelled at their deadline. Plain executors run in a thread of their own, so the
loop (heartbeats, cancel frames) never waits for them. Python cannot interrupt a
thread: at the deadline, or on cancel, the attempt fails at once and its Outcome
carries ``lingering``, which completes when the thread finally returns. The next
``run`` waits for it, so the pod never runs two tasks' code at once.

With ``inline=True`` (``mawex worker --sandbox-inline``) plain executors run on the
loop itself, as async ones do, without the hand-off to the thread and back (two
thread wake-ups: tens of microseconds a task on a small machine). While such a call
runs, the worker's loop waits: no heartbeat, ping or cancel is handled, and the
deadline is checked only when the call returns (past it, the attempt fails as timed
out, its value dropped). For calls of milliseconds; a call of seconds holds up the
worker's heartbeats, and a master may count the worker lost.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import queue
import threading
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from mawex.model import Task
from mawex.sandbox.base import Outcome
from mawex.sandbox.executor_ref import (
    ERROR_LIMIT,
    Executor,
    encode_result,
    format_error,
    load_executor,
)
from mawex.sandbox.waiting import wait_any

__all__ = ["LocalSandbox"]

log = logging.getLogger("mawex.sandbox")

#: What the executor's code produced: ``(True, value)`` or ``(False, exception)``.
_Result = tuple[bool, Any]


class _Attempt:
    """The attempt a sandbox is running, and why it was stopped (if it was)."""

    __slots__ = ("reason", "stop", "task")

    def __init__(self, task: Task) -> None:
        self.task = task
        #: Done once the attempt is cancelled (a future: waited on with no task of its own).
        self.stop: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.reason: str | None = None


async def _call_async(call: Callable[[], Any]) -> _Result:
    try:
        return True, await call()
    except (Exception, SystemExit) as exc:  # SystemExit must not take the worker down
        return False, exc


def _identity(value: Any) -> Any:
    return value


def _call_inline(call: Callable[[], Any]) -> _Result:
    try:
        return True, call()
    except (Exception, SystemExit) as exc:  # SystemExit must not take the worker down
        return False, exc


class _ExecutorThread:
    """A daemon thread that runs sync executor calls one after another.

    Starting a thread per task cost more than a small task itself; one thread is
    reused while it is free. A thread stuck in a timed-out call is left to finish
    on its own (Python cannot stop it) and a new one takes over.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[
            tuple[asyncio.AbstractEventLoop, asyncio.Future[_Result], Callable[[], Any]] | None
        ] = queue.SimpleQueue()
        self.idle = True
        thread = threading.Thread(
            target=self._main,
            name="mawex-local-executor",
            daemon=True,  # a stuck executor must not keep the process alive at exit
        )
        thread.start()

    def submit(
        self,
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[_Result],
        call: Callable[[], Any],
    ) -> None:
        self.idle = False
        self._jobs.put((loop, future, call))

    def stop(self) -> None:
        """Exit once the current call, if any, returns."""
        self._jobs.put(None)

    def _main(self) -> None:
        while (job := self._jobs.get()) is not None:
            loop, future, call = job
            result: _Result
            try:
                result = (True, call())
            except BaseException as exc:  # everything user code raises, SystemExit included
                result = (False, exc)
            self.idle = True  # before the loop hears of it, so the next task reuses us
            try:
                loop.call_soon_threadsafe(_settle, future, result)
            except RuntimeError:  # the loop is closed: nobody waits for this result any more
                pass


def _settle(future: asyncio.Future[_Result], result: _Result) -> None:
    if not future.done():
        future.set_result(result)


class LocalSandbox:
    """Runs the executor in the worker's own process (kind ``local``).

    The executor is loaded (and a class instantiated with ``args``) once, in
    :meth:`start`. ``cancel_grace_s`` is how long a cancelled ``async`` executor
    may take to unwind before it is reported as lingering. ``inline`` runs a plain
    executor on the worker's loop rather than on a thread (see the module's notes).
    """

    kind = "local"

    def __init__(
        self,
        executor_ref: str,
        args: Mapping[str, str] | None = None,
        *,
        cancel_grace_s: float = 1.0,
        error_limit: int = ERROR_LIMIT,
        inline: bool = False,
    ) -> None:
        self.executor_ref = executor_ref
        self.args = dict(args or {})
        self.cancel_grace_s = cancel_grace_s
        self.error_limit = error_limit
        self.inline = inline
        self._executor: Executor | None = None
        self._attempt: _Attempt | None = None
        self._lingering: asyncio.Future[None] | None = None
        self._strays: set[asyncio.Future[_Result]] = set()
        self._thread: _ExecutorThread | None = None

    @property
    def executor(self) -> Executor:
        """The loaded executor; :meth:`start` must have run."""
        if self._executor is None:
            raise RuntimeError("the sandbox is not started")
        return self._executor

    @property
    def busy(self) -> bool:
        """Whether an attempt, or the code of an abandoned one, is still running."""
        return self._attempt is not None or self._lingering is not None

    async def start(self) -> None:
        """Load the executor; raises ExecutorLoadError (or ConfigError for bad args)."""
        if self._executor is None:
            self._executor = load_executor(self.executor_ref, self.args)
            log.debug(
                "executor loaded",
                extra={"action": "executor_loaded", "executor": repr(self._executor)},
            )

    async def run(self, task: Task, timeout_s: float | None) -> Outcome:
        """Run one attempt; the deadline starts once any lingering code has returned."""
        executor = self.executor
        if self._attempt is not None:
            raise RuntimeError("a sandbox runs one attempt at a time")
        attempt = self._attempt = _Attempt(task)
        try:
            if self._lingering is not None:
                log.info(
                    "waiting for the code of an abandoned attempt to return",
                    extra={"action": "wait_lingering", "task": task.id},
                )
                if not await self._wait(self._lingering, attempt, None):
                    return self._stopped(attempt, None, None)
            loop = asyncio.get_running_loop()
            deadline = None if timeout_s is None else loop.time() + timeout_s
            work = self._launch(lambda: executor.call(task), executor.is_async)
            if (
                self.inline
                and not executor.is_async
                and deadline is not None
                and loop.time() > deadline
            ):  # an inline call overran: its value is dropped
                _, value = work.result()
                if inspect.iscoroutine(value):
                    value.close()
                return self._stopped(attempt, timeout_s, None)
            try:
                while True:
                    remaining = None if deadline is None else max(0.0, deadline - loop.time())
                    if not await self._wait(work, attempt, remaining):
                        return await self._abandon(work, attempt, timeout_s)
                    ok, value = work.result()
                    if not ok:
                        return Outcome.failure(format_error(value, self.error_limit))
                    if not inspect.isawaitable(value):
                        return encode_result(value)
                    # A plain function returned an awaitable (e.g. a decorated coroutine).
                    work = self._launch(functools.partial(_identity, value), True)
            except asyncio.CancelledError:
                if not work.done():  # the code outlives run(): the next run() waits for it
                    if isinstance(work, asyncio.Task):
                        work.cancel()
                    self._linger(work)
                raise
        finally:
            self._attempt = None

    async def cancel(self, reason: str) -> None:
        """Stop the running attempt, if any; its ``run`` returns a failed Outcome."""
        attempt = self._attempt
        if attempt is not None and not attempt.stop.done():
            attempt.reason = reason
            attempt.stop.set_result(None)

    async def close(self) -> None:
        """Cancel the running attempt and any abandoned async code (threads cannot be killed)."""
        await self.cancel("sandbox closed")
        if self._thread is not None:
            self._thread.stop()
            self._thread = None
        tasks = [stray for stray in self._strays if isinstance(stray, asyncio.Task)]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=self.cancel_grace_s)

    # -- internals ------------------------------------------------------------

    def _launch(self, call: Callable[[], Any], is_async: bool) -> asyncio.Future[_Result]:
        """Start ``call``: as an asyncio task when it is async, else in a thread of its
        own (or, ``inline``, run it here: the future returned is done)."""
        if is_async:
            return asyncio.ensure_future(_call_async(call))
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_Result] = loop.create_future()
        if self.inline:
            future.set_result(_call_inline(call))
            return future
        thread = self._thread
        if thread is None or not thread.idle:
            if thread is not None:
                thread.stop()
            thread = self._thread = _ExecutorThread()
        thread.submit(loop, future, call)
        return future

    @staticmethod
    async def _wait(work: asyncio.Future[Any], attempt: _Attempt, timeout_s: float | None) -> bool:
        """Wait for ``work``; False when the deadline passed or the attempt was cancelled."""
        if work.done():
            return True
        await wait_any(work, attempt.stop, timeout=timeout_s)
        return work.done() and not attempt.stop.done()

    def _stopped(
        self, attempt: _Attempt, timeout_s: float | None, lingering: Awaitable[None] | None
    ) -> Outcome:
        if attempt.reason is not None:
            error = f"cancelled: {attempt.reason}"
        else:
            error = f"timed out after {timeout_s:g}s"
        return Outcome.failure(error, lingering=lingering)

    async def _abandon(
        self, work: asyncio.Future[_Result], attempt: _Attempt, timeout_s: float | None
    ) -> Outcome:
        """The attempt is over but its code is not: stop what can be stopped."""
        if isinstance(work, asyncio.Task):
            work.cancel()
            await asyncio.wait({work}, timeout=self.cancel_grace_s)
        if work.done():
            if not work.cancelled():
                work.result()
            return self._stopped(attempt, timeout_s, None)
        log.warning(
            "the executor's code is still running after the attempt ended",
            extra={"action": "lingering", "task": attempt.task.id},
        )
        return self._stopped(attempt, timeout_s, self._linger(work))

    def _linger(self, work: asyncio.Future[_Result]) -> asyncio.Future[None]:
        lingering: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._lingering = lingering
        self._strays.add(work)

        def returned(done: asyncio.Future[_Result]) -> None:
            self._strays.discard(done)
            if not done.cancelled():
                done.result()
            if not lingering.done():
                lingering.set_result(None)
            if self._lingering is lingering:
                self._lingering = None
            log.info("abandoned code returned", extra={"action": "lingering_done"})

        work.add_done_callback(returned)
        return lingering
