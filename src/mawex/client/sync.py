"""The blocking client: drives the flows of :mod:`mawex.client._base` over blocking sockets.

Requests go over :class:`mawex.client._http.LeanHttpSync`, a thread-safe keep-alive
pool on blocking sockets, or over ``httpx.Client`` when the caller hands in an httpx
``transport``.
"""

from __future__ import annotations

import copy
import os
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import httpx

from mawex.client._base import (
    BATCH_SIZE,
    FAILOVER_TIMEOUT,
    BatchReceipt,
    Call,
    ClientCore,
    Emit,
    Flow,
    Outcome,
    Send,
    Sleep,
    Submission,
    SubmitReceipt,
    check_busy_poll,
    http_options,
    refuse_unix_with_transport,
    submission,
    take_batch,
)
from mawex.client._http import LeanHttpSync
from mawex.errors import MawexError
from mawex.model import ResultEvent, TaskResult

T = TypeVar("T")


class Client:
    """A blocking client of a mawex cluster that follows the leader across failovers.

    ``masters`` is a URL, a comma-separated string of URLs or a list of them: any
    masters of one cluster, leader or standby. Writes go to the leader (found by
    following ``not_leader`` hints and trying the others); when none answers, calls
    back off and retry for up to ``failover_timeout`` seconds, then raise
    :class:`mawex.Unavailable`. ``timeout`` bounds each HTTP request, ``token`` is
    sent as ``Authorization: Bearer``, ``ca`` is a CA bundle for private TLS and
    ``transport`` an httpx transport (tests).
    ``busy_poll`` (seconds, up to 1; 0 is off) has the client await each reply
    without sleeping for that long, reading its socket without blocking and yielding
    the CPU between tries: a lower round trip for calls of a few milliseconds, paid
    in the caller's CPU while it waits (see ``docs/operations.md``, Latency).

    A client may be shared by threads. Their :meth:`submit` calls are then coalesced:
    a call made while no other is in flight is sent at once; calls made while one is
    wait for it and go together in one ``POST /v1/tasks/batch``, sent by the first
    of them. Each still gets its own receipt or error, accepted in call order.

    Example::

        with mawex.Client("http://m1:8000,http://m2:8000", token="s3cret") as client:
            receipt = client.submit("thumbnails", {"url": "https://…/cat.png"})
            print(client.result("thumbnails", receipt.id, timeout=60))
            for event in client.results(from_offset=0, follow=False):
                print(event.offset, event.type, event.id)
    """

    def __init__(
        self,
        masters: str | Sequence[str],
        *,
        token: str | None = None,
        ca: str | os.PathLike[str] | None = None,
        timeout: float | None = 10.0,
        transport: httpx.BaseTransport | None = None,
        failover_timeout: float = FAILOVER_TIMEOUT,
        busy_poll: float = 0.0,
    ) -> None:
        self._core = ClientCore(masters, timeout=timeout, failover_timeout=failover_timeout)
        busy_poll = check_busy_poll(busy_poll, transport)
        if transport is not None:
            refuse_unix_with_transport(self._core.failover.urls)
        options = http_options(token=token, ca=ca, timeout=timeout)
        self._http: LeanHttpSync | httpx.Client
        if transport is None:
            self._http = LeanHttpSync(
                headers=options["headers"],
                ssl_context=options.get("verify"),
                timeout=options["timeout"],
                busy_poll=busy_poll,
            )
        else:
            self._http = httpx.Client(transport=transport, **options)
        #: Submissions of other threads waiting for the one in flight, in call order.
        self._waiting: deque[tuple[Submission, _Waiter]] = deque()
        self._lock = threading.Lock()
        self._sending = False

    @property
    def masters(self) -> list[str]:
        """The known master URLs, the one that last answered first."""
        return list(self._core.failover.urls)

    def __repr__(self) -> str:
        return f"Client({','.join(self.masters)!r})"

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    # -- operations --

    def submit(
        self,
        group: str,
        payload: Any = None,
        *,
        id: str | None = None,
        max_attempts: int | None = None,
        timeout_s: float | None = None,
    ) -> SubmitReceipt:
        """Submit one task (``id`` defaults to a fresh uuid4 hex); idempotent by ``(group, id)``.

        ``receipt.duplicate`` is true when the master already had this task (also when
        an earlier try of this same call got through before a failover). Raises
        :class:`mawex.Rejected` (or a subclass) for bad input.
        """
        item = submission(group, payload, id=id, max_attempts=max_attempts, timeout_s=timeout_s)
        waiter = _Waiter()
        with self._lock:
            self._waiting.append((item, waiter))
            waiter.sends = not self._sending
            self._sending = True
        if not waiter.sends:
            try:
                waiter.event.wait()  # for its outcome, or for its turn to send
            except BaseException:  # interrupted: give up the task, and the turn if it came
                with self._lock:
                    if waiter.outcome is None:
                        waiter.outcome = MawexError("the submission was interrupted")
                        if waiter.sends:
                            self._pass_turn()
                raise
        if waiter.sends:
            self._send_next()
        return waiter.result()

    def submit_many(
        self,
        tasks: Iterable[Mapping[str, Any]],
        *,
        group: str | None = None,
        chunk_size: int = BATCH_SIZE,
    ) -> BatchReceipt:
        """Submit tasks (``{"id", "payload", ["group"], ["max_attempts"], ["timeout_s"]}``).

        ``group`` is the default group and a missing id becomes a uuid4. The tasks are
        sent in chunks of ``chunk_size`` (smaller if the master caps batches); a chunk is
        accepted whole or not at all, and when one is rejected the earlier ones stay
        accepted: submitting the same tasks again is safe, they come back as duplicates.
        """
        return self._run(self._core.submit_many(tasks, group=group, chunk_size=chunk_size))

    def get(self, group: str, id: str) -> TaskResult:
        """The task's current status; raises :class:`mawex.NotFound` for an unknown task."""
        return self._run(self._core.get(group, id))

    def run(
        self,
        group: str,
        payload: Any = None,
        *,
        id: str | None = None,
        max_attempts: int | None = None,
        timeout_s: float | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Submit one task and return its result once it has run: :meth:`submit` and
        :meth:`result` in one request (``POST /v1/tasks?wait=…``) when it ends quickly.

        ``timeout`` bounds the wait (:class:`mawex.ResultTimeout`; the task stays
        queued); ``timeout_s`` is the task's own run-time limit. Raises as
        :meth:`result` does when the task does not complete.
        """
        return self._run(
            self._core.run(
                group,
                payload,
                id=id,
                max_attempts=max_attempts,
                timeout_s=timeout_s,
                timeout=timeout,
            )
        )

    def result(self, group: str, id: str, *, timeout: float | None = None) -> Any:
        """Wait (by long polling) until the task ends and return its result.

        Raises :class:`mawex.TaskFailed`, :class:`mawex.TaskCancelled` or
        :class:`mawex.TaskExpired` if it ended otherwise, and
        :class:`mawex.ResultTimeout` if it has not ended after ``timeout`` seconds.
        """
        return self._run(self._core.result(group, id, timeout=timeout))

    def cancel(self, group: str, id: str) -> TaskResult:
        """Cancel a pending or running task; returns the task as it is afterwards."""
        return self._run(self._core.cancel(group, id))

    def state(self) -> dict[str, Any]:
        """The cluster state (``GET /v1/state``), from the leader when one answers."""
        return self._run(self._core.state())

    def results(
        self, from_offset: int = 0, *, follow: bool = True, limit: int = 1000
    ) -> Iterator[ResultEvent]:
        """Iterate over the result topic from ``from_offset``.

        With ``follow`` (the default) wait for new events forever, across failovers;
        otherwise stop at the end of the topic. ``limit`` is the page size.
        """
        flow: Flow[None] = self._core.results(from_offset, follow=follow, limit=limit)
        try:
            outcome: Outcome = None
            while True:
                try:
                    action = flow.send(outcome)
                except StopIteration:
                    return
                if isinstance(action, Emit):
                    yield from action.events
                    outcome = None
                else:
                    outcome = self._perform(action)
        finally:
            flow.close()

    # -- coalesced submissions --

    def _send_next(self) -> None:
        """Send the next batch (this thread's task is in it), then hand the turn on."""
        with self._lock:
            batch = take_batch(self._waiting, self._core.coalesce_limit, _Waiter.done)
        outcomes: Sequence[SubmitReceipt | BaseException]
        try:
            outcomes = self._run(self._core.submit_each([item for item, _ in batch]))
        except BaseException as exc:  # A bug or an interrupt: all are told, none hang.
            outcomes = [exc] * len(batch)
            raise
        finally:
            shared: set[int] = set()
            for (_, waiter), outcome in zip(batch, outcomes, strict=True):
                # One error object can stand for several callers: each gets a copy.
                waiter.outcome = _copy(outcome) if id(outcome) in shared else outcome
                shared.add(id(outcome))
                waiter.event.set()
            with self._lock:
                self._pass_turn()

    def _pass_turn(self) -> None:
        """The first waiting thread sends next (call with the lock held)."""
        while self._waiting and self._waiting[0][1].done():
            self._waiting.popleft()
        if self._waiting:
            _, waiter = self._waiting[0]
            waiter.sends = True
            waiter.event.set()
        else:
            self._sending = False

    # -- the IO loop --

    def _run(self, flow: Call[T]) -> T:
        outcome: Outcome = None
        try:
            while True:
                outcome = self._perform(flow.send(outcome))
        except StopIteration as stop:
            result: T = stop.value
            return result
        finally:
            flow.close()

    def _perform(self, action: Send | Sleep) -> Outcome:
        if isinstance(action, Sleep):
            self._sleep(action.seconds)
            return None
        headers = {"content-type": "application/json"} if action.content else None
        try:
            if isinstance(self._http, LeanHttpSync):
                return self._http.request(
                    action.method,
                    action.url,
                    params=action.params,
                    content=action.content,
                    headers=headers,
                    timeout=action.timeout,
                )
            return self._http.request(
                action.method,
                action.url,
                params=action.params,
                content=action.content,
                headers=headers,
                timeout=action.timeout or httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.RequestError as exc:
            return exc

    _sleep = staticmethod(time.sleep)


class _Waiter:
    """One thread's ``submit`` call: its outcome once known, or its turn to send."""

    __slots__ = ("event", "outcome", "sends")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.outcome: SubmitReceipt | BaseException | None = None
        self.sends = False

    def done(self) -> bool:
        return self.outcome is not None

    def result(self) -> SubmitReceipt:
        outcome = self.outcome
        if isinstance(outcome, SubmitReceipt):
            return outcome
        assert outcome is not None
        raise outcome


def _copy(error: T) -> T:
    if not isinstance(error, BaseException):
        return error
    try:
        return copy.copy(error)
    except Exception:  # An exception class that cannot be rebuilt from its args.
        return error


__all__ = ["Client"]
