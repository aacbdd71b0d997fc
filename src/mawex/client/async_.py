"""The asyncio client: drives the flows of :mod:`mawex.client._base` over HTTP/1.1.

Requests go over :class:`mawex.client._http.LeanHttp`, a keep-alive pool several
times cheaper per request than ``httpx.AsyncClient``, which is used instead when
the caller hands in an httpx ``transport``.
"""

from __future__ import annotations

import asyncio
import copy
import os
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
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
from mawex.client._http import LeanHttp
from mawex.errors import MawexError
from mawex.model import ResultEvent, TaskResult

T = TypeVar("T")


class AsyncClient:
    """An asyncio client of a mawex cluster; the async twin of :class:`mawex.Client`.

    ``masters`` is a URL, a comma-separated string of URLs or a list of them: any
    masters of one cluster, leader or standby. Writes go to the leader (found by
    following ``not_leader`` hints and trying the others); when none answers, calls
    back off and retry for up to ``failover_timeout`` seconds, then raise
    :class:`mawex.Unavailable`. ``timeout`` bounds each HTTP request, ``token`` is
    sent as ``Authorization: Bearer``, ``ca`` is a CA bundle for private TLS and
    ``transport`` an httpx transport (tests).
    ``busy_poll`` (seconds, up to 1; 0 is off) keeps the event loop polling for that
    long after each request is sent instead of sleeping: a lower round trip for calls
    of a few milliseconds, paid in CPU while the loop waits (see
    ``docs/operations.md``, Latency).

    Concurrent :meth:`submit` calls are coalesced, with no timer: a call made while
    nothing is in flight is sent at once (with any others made in the same event-loop
    turn); calls made while a request is in flight wait for it to end and then go
    together in one ``POST /v1/tasks/batch``. Each caller still gets its own receipt
    or its own error, and tasks are accepted in call order. So many ``submit`` calls
    in flight (``asyncio.gather``) are about as fast as :meth:`submit_many`.

    Example::

        async with mawex.AsyncClient(["http://m1:8000", "http://m2:8000"]) as client:
            receipt = await client.submit("thumbnails", {"url": "https://…/cat.png"})
            print(await client.result("thumbnails", receipt.id, timeout=60))
            async for event in client.results(from_offset=0, follow=False):
                print(event.offset, event.type, event.id)
    """

    def __init__(
        self,
        masters: str | Sequence[str],
        *,
        token: str | None = None,
        ca: str | os.PathLike[str] | None = None,
        timeout: float | None = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
        failover_timeout: float = FAILOVER_TIMEOUT,
        busy_poll: float = 0.0,
    ) -> None:
        self._core = ClientCore(masters, timeout=timeout, failover_timeout=failover_timeout)
        busy_poll = check_busy_poll(busy_poll, transport)
        if transport is not None:
            refuse_unix_with_transport(self._core.failover.urls)
        options = http_options(token=token, ca=ca, timeout=timeout)
        self._http: LeanHttp | httpx.AsyncClient
        if transport is None:
            self._http = LeanHttp(
                headers=options["headers"],
                ssl_context=options.get("verify"),
                timeout=options["timeout"],
                busy_poll=busy_poll,
            )
        else:
            self._http = httpx.AsyncClient(transport=transport, **options)
        #: Submissions waiting for the request in flight to end, in call order.
        self._waiting: deque[tuple[Submission, asyncio.Future[SubmitReceipt]]] = deque()
        self._sender: asyncio.Task[None] | None = None

    @property
    def masters(self) -> list[str]:
        """The known master URLs, the one that last answered first."""
        return list(self._core.failover.urls)

    def __repr__(self) -> str:
        return f"AsyncClient({','.join(self.masters)!r})"

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections; a submission still waiting raises :class:`mawex.MawexError`."""
        sender, self._sender = self._sender, None
        if sender is not None and not sender.done():
            sender.cancel()
            try:
                await sender
            except asyncio.CancelledError:
                pass
        self._fail_waiting(MawexError("the client was closed"))
        await self._http.aclose()

    # -- operations --

    async def submit(
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

        Calls made while another submission is in flight are sent together with the
        other waiting ones in one batch request (see the class): for throughput, keep
        many calls in flight (``asyncio.gather``, or one task per submission).
        """
        item = submission(group, payload, id=id, max_attempts=max_attempts, timeout_s=timeout_s)
        future: asyncio.Future[SubmitReceipt] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if self._sender is None or self._sender.done():  # done: its loop died under it
            self._sender = asyncio.create_task(self._send_waiting(), name="mawex-submit")
        return await future

    async def run(
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
        return await self._run(
            self._core.run(
                group,
                payload,
                id=id,
                max_attempts=max_attempts,
                timeout_s=timeout_s,
                timeout=timeout,
            )
        )

    async def submit_many(
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
        return await self._run(self._core.submit_many(tasks, group=group, chunk_size=chunk_size))

    async def get(self, group: str, id: str) -> TaskResult:
        """The task's current status; raises :class:`mawex.NotFound` for an unknown task."""
        return await self._run(self._core.get(group, id))

    async def result(self, group: str, id: str, *, timeout: float | None = None) -> Any:
        """Wait (by long polling) until the task ends and return its result.

        Raises :class:`mawex.TaskFailed`, :class:`mawex.TaskCancelled` or
        :class:`mawex.TaskExpired` if it ended otherwise, and
        :class:`mawex.ResultTimeout` if it has not ended after ``timeout`` seconds.
        """
        return await self._run(self._core.result(group, id, timeout=timeout))

    async def cancel(self, group: str, id: str) -> TaskResult:
        """Cancel a pending or running task; returns the task as it is afterwards."""
        return await self._run(self._core.cancel(group, id))

    async def state(self) -> dict[str, Any]:
        """The cluster state (``GET /v1/state``), from the leader when one answers."""
        return await self._run(self._core.state())

    async def results(
        self, from_offset: int = 0, *, follow: bool = True, limit: int = 1000
    ) -> AsyncIterator[ResultEvent]:
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
                    for event in action.events:
                        yield event
                    outcome = None
                else:
                    outcome = await self._perform(action)
        finally:
            flow.close()

    # -- coalesced submissions --

    async def _send_waiting(self) -> None:
        """Send what waits, one request at a time (so in call order), until nothing does."""
        try:
            while batch := self._take():
                outcomes: Sequence[SubmitReceipt | BaseException]
                try:
                    outcomes = await self._run(self._core.submit_each([item for item, _ in batch]))
                except Exception as exc:  # Not a submission's outcome: a bug, say it to all.
                    outcomes = [exc] * len(batch)
                except BaseException:  # Cancelled by aclose(): these callers must not hang.
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(MawexError("the client was closed"))
                    raise
                shared: set[int] = set()
                for (_, future), outcome in zip(batch, outcomes, strict=True):
                    if future.done():  # The caller was cancelled; the others go on.
                        continue
                    if isinstance(outcome, SubmitReceipt):
                        future.set_result(outcome)
                    else:
                        # One error object can stand for several callers: each gets a copy.
                        future.set_exception(_copy(outcome) if id(outcome) in shared else outcome)
                        shared.add(id(outcome))
        finally:
            self._sender = None

    def _take(self) -> list[tuple[Submission, asyncio.Future[SubmitReceipt]]]:
        # A future done before it is sent: its caller was cancelled, the task is dropped.
        return take_batch(self._waiting, self._core.coalesce_limit, asyncio.Future.done)

    def _fail_waiting(self, error: MawexError) -> None:
        while self._waiting:
            _, future = self._waiting.popleft()
            if not future.done():
                future.set_exception(_copy(error))

    # -- the IO loop --

    async def _run(self, flow: Call[T]) -> T:
        outcome: Outcome = None
        try:
            while True:
                outcome = await self._perform(flow.send(outcome))
        except StopIteration as stop:
            result: T = stop.value
            return result
        finally:
            flow.close()

    async def _perform(self, action: Send | Sleep) -> Outcome:
        if isinstance(action, Sleep):
            await self._sleep(action.seconds)
            return None
        headers = {"content-type": "application/json"} if action.content else None
        try:
            if isinstance(self._http, LeanHttp):
                return await self._http.request(
                    action.method,
                    action.url,
                    params=action.params,
                    content=action.content,
                    headers=headers,
                    timeout=action.timeout,
                )
            return await self._http.request(
                action.method,
                action.url,
                params=action.params,
                content=action.content,
                headers=headers,
                timeout=action.timeout or httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.RequestError as exc:
            return exc

    _sleep = staticmethod(asyncio.sleep)


def _copy(error: BaseException) -> BaseException:
    try:
        return copy.copy(error)
    except Exception:  # An exception class that cannot be rebuilt from its args.
        return error


__all__ = ["AsyncClient"]
