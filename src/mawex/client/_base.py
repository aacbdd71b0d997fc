"""What both clients share, without IO: requests, parsing, error mapping, failover.

Every client operation is written once here as a *flow*: a generator that yields
actions (:class:`Send` a request, :class:`Sleep`, :class:`Emit` result events) and
is sent back the outcome of each :class:`Send` (an ``httpx.Response``, or the
``httpx.RequestError`` the request raised). :class:`mawex.Client` and
:class:`mawex.AsyncClient` only drive these generators with blocking or async IO,
the way httpx drives ``Auth.auth_flow``, so the two cannot drift apart.
"""

from __future__ import annotations

import functools
import json
import os
import random
import re
import ssl
import time
import uuid
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, TypeAlias, TypeVar
from urllib.parse import quote

import httpx
import msgspec

from mawex.addresses import master_url, socket_path
from mawex.busy_poll import check_window
from mawex.errors import (
    ConfigError,
    MawexError,
    NotFound,
    NotLeader,
    QueueFull,
    Rejected,
    ResultTimeout,
    TaskCancelled,
    TaskExpired,
    TaskFailed,
    TooLarge,
    Unauthorized,
    Unavailable,
)
from mawex.model import ResultEvent, TaskResult, TaskStatus, check_id, check_name

T = TypeVar("T")

#: Longest a single long-poll request asks the master to hold (seconds).
LONG_POLL_CAP = 25.0
#: Tasks per ``POST /v1/tasks/batch`` request unless told otherwise.
BATCH_SIZE = 1000
#: Most bytes of tasks one coalesced batch of ``submit`` calls carries (the master takes 64 MiB).
COALESCE_BYTES = 4 << 20
#: How long a call keeps trying masters before raising :class:`Unavailable`.
FAILOVER_TIMEOUT = 30.0
BACKOFF_BASE = 0.1
BACKOFF_CAP = 2.0
TASK_FIELDS = frozenset({"id", "group", "payload", "max_attempts", "timeout_s"})


@dataclass(frozen=True, slots=True)
class SubmitReceipt:
    """The master's acknowledgement of one submission."""

    id: str
    group: str
    #: True if the master already had this ``(group, id)``: nothing new was queued.
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class Submission:
    """One ``submit`` call's task, checked and encoded once, waiting to go alone or in a batch."""

    body: dict[str, Any]
    content: bytes
    #: The caller chose the id, so the master may have it already (a generated one it cannot).
    named: bool

    @property
    def key(self) -> tuple[str, str]:
        return self.body["group"], self.body["id"]


#: What :meth:`ClientCore.submit_each` gives each submission: its receipt or its error.
SubmitOutcome: TypeAlias = "SubmitReceipt | MawexError"


@dataclass(frozen=True, slots=True)
class BatchReceipt:
    """The master's acknowledgement of a batch (summed over chunks)."""

    accepted: int
    duplicates: int


# -- actions a flow yields ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    """Send one HTTP request; the flow receives the response or the request error."""

    method: str
    url: str
    params: dict[str, str] | None = None
    content: bytes | None = None
    #: Overrides the client's timeout (long polls need a longer read timeout).
    timeout: httpx.Timeout | None = None


@dataclass(frozen=True, slots=True)
class Sleep:
    """Wait this many seconds; the flow receives ``None``."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Emit:
    """Hand result events to the caller of ``results()``; the flow receives ``None``."""

    events: list[ResultEvent]


Outcome: TypeAlias = "httpx.Response | httpx.RequestError | None"
Call: TypeAlias = Generator[Send | Sleep, Outcome, T]
Flow: TypeAlias = Generator[Send | Sleep | Emit, Outcome, T]


# -- URLs and failover --------------------------------------------------------------------------


def refuse_unix_with_transport(urls: Sequence[str]) -> None:
    """A client given its own httpx transport cannot reach a master on a Unix socket."""
    for url in urls:
        if socket_path(url) is not None:
            raise ConfigError(
                f"{url} is a Unix socket: the client reaches it on its own connections, "
                "not through a given httpx transport"
            )


def check_busy_poll(busy_poll: float, transport: object) -> float:
    """``busy_poll`` if it is a usable window (seconds) for a client with ``transport``."""
    try:
        check_window(busy_poll)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if busy_poll and transport is not None:
        raise ConfigError("busy_poll needs the client's own connections, not an httpx transport")
    return busy_poll


def parse_masters(masters: str | Sequence[str]) -> list[str]:
    """Master URLs from a list and/or comma-separated strings, in order, without duplicates."""
    items = [masters] if isinstance(masters, str) else list(masters)
    urls: list[str] = []
    for item in items:
        for raw in str(item).split(","):
            if raw.strip():
                url = master_url(raw)
                if url not in urls:
                    urls.append(url)
    if not urls:
        raise ConfigError("no master URL given")
    return urls


class Failover:
    """The known masters in order of preference: the last one that answered comes first.

    A leader hint that is not in the list joins it once that master answers.
    """

    def __init__(self, urls: Sequence[str]) -> None:
        self.urls = list(urls)

    def prefer(self, url: str) -> None:
        # One assignment, so concurrent callers at worst lose an update, never corrupt the list.
        self.urls = [url, *(u for u in self.urls if u != url)]

    def after(self, url: str) -> Iterator[str]:
        """Every other known URL, starting after ``url`` (or from the first) and wrapping round."""
        urls = self.urls
        start = urls.index(url) + 1 if url in urls else 0
        for i in range(len(urls)):
            candidate = urls[(start + i) % len(urls)]
            if candidate != url:
                yield candidate


@dataclass
class Attempt:
    """The failover choice for one request.

    Start at the preferred master. After a failure go to the leader hint if there is
    one not yet tried in this round, else to the next untried master. When a whole
    round has failed, back off (exponential with jitter, capped) and start another;
    a round that ends after ``deadline`` raises :class:`Unavailable` naming what
    was tried.
    """

    failover: Failover
    deadline: float
    started: float
    rng: random.Random
    url: str = ""
    rounds: int = 0
    hint: str | None = None
    tried: dict[str, str] = field(default_factory=dict)
    history: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.url = self.url or self.failover.urls[0]

    def fail(self, reason: str, now: float, hint: str | None = None) -> float:
        """Record that ``self.url`` failed and move ``self.url`` on; return the delay first."""
        self.tried[self.url] = self.history[self.url] = reason
        if hint:
            self.hint = hint
        if hint and hint not in self.tried:
            self.url = hint
            return 0.0
        untried = next((u for u in self.failover.after(self.url) if u not in self.tried), None)
        if untried is not None:
            self.url = untried
            return 0.0
        # A full round and nobody answered: back off and start another, if there is time.
        remaining = self.deadline - now
        if remaining <= 0:
            raise self.unavailable(now)
        step = min(BACKOFF_CAP, BACKOFF_BASE * 2.0**self.rounds)
        self.rounds += 1
        self.tried.clear()
        self.url = self.hint or self.failover.urls[0]
        return min(step * (0.5 + 0.5 * self.rng.random()), remaining)

    def unavailable(self, now: float) -> Unavailable:
        tried = "; ".join(f"{url} ({why})" for url, why in self.history.items())
        return Unavailable(f"no master answered within {now - self.started:.1f}s; tried {tried}")


# -- encoding and parsing -----------------------------------------------------------------------


@functools.lru_cache(maxsize=128)
def _hold_timeout(timeout: float | None, wait: float) -> httpx.Timeout:
    read = None if timeout is None else timeout + wait
    return httpx.Timeout(timeout, read=read)


_encode_json = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def encode_json(value: Any) -> bytes:
    """Strict JSON (no NaN), raising :class:`Rejected` for what JSON cannot carry."""
    try:
        return _encode_json(value).encode()
    except (TypeError, ValueError) as exc:
        raise Rejected(f"not JSON-serializable: {exc}") from exc


_decode_json = msgspec.json.Decoder().decode


def decode_body(response: httpx.Response) -> Any:
    """The response's JSON body: msgspec's fast decoder, and the standard library's for
    what only it takes (``NaN``, numbers beyond a double, other UTF encodings)."""
    try:
        return _decode_json(response.content)
    except (msgspec.DecodeError, msgspec.ValidationError):
        pass
    try:
        return response.json()
    except ValueError as exc:
        raise MawexError(
            f"malformed response from {response.request.url}: "
            f"HTTP {response.status_code} {response.text[:200]!r}"
        ) from exc


def _dict(body: Any, what: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise MawexError(f"malformed {what}: {body!r:.200}")
    return body


_BY_STATUS: dict[int, type[Rejected]] = {
    400: Rejected,
    401: Unauthorized,
    403: Unauthorized,
    404: NotFound,
    413: TooLarge,
    422: Rejected,
    429: QueueFull,
}
_BY_CODE: dict[str, type[Rejected]] = {
    cls.code: cls for cls in (Rejected, Unauthorized, NotFound, TooLarge, QueueFull)
}


def error_from_response(response: httpx.Response) -> MawexError:
    """Map an error response (``{"error", "detail"[, "leader"]}``) to a :mod:`mawex.errors` class.

    4xx statuses map to :class:`Rejected` and its subclasses, ``503 not_leader`` to
    :class:`NotLeader` (with the normalised hint); any other 5xx to plain
    :class:`MawexError` (the caller treats it as "this master is not healthy").
    """
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        code = str(body.get("error") or "")
        detail = str(body.get("detail") or code or f"HTTP {status}")
    else:
        code, detail = "", (response.text[:200].strip() or f"HTTP {status}")
    if code == "not_leader" or (status == 503 and isinstance(body, dict) and "leader" in body):
        leader = body.get("leader") if isinstance(body, dict) else None
        hint = _hint(leader)
        return NotLeader(hint, detail if detail != code else None)
    if 400 <= status < 500:
        cls = _BY_STATUS.get(status) or _BY_CODE.get(code, Rejected)
        return cls(detail)
    error = MawexError(f"HTTP {status} {code}: {detail}" if code else f"HTTP {status}: {detail}")
    error.status = status
    return error


def _hint(leader: object) -> str | None:
    if not isinstance(leader, str) or not leader.strip():
        return None
    try:
        return master_url(leader)
    except ConfigError:
        return None


def parse_task_result(body: Any) -> TaskResult:
    """``GET /v1/tasks/{group}/{id}`` body → :class:`TaskResult`."""
    data = _dict(body, "task")
    try:
        return TaskResult(
            id=str(data["id"]),
            group=str(data["group"]),
            status=TaskStatus(data["status"]),
            attempt=int(data.get("attempt") or 0),
            result=data.get("result"),
            error=data.get("error"),
            errors=[str(e) for e in data.get("errors") or ()],
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise MawexError(f"malformed task: {data!r:.200}") from exc


def parse_event(body: Any) -> ResultEvent:
    """One result-topic event → :class:`ResultEvent`; unknown fields are ignored."""
    data = _dict(body, "result event")
    try:
        return ResultEvent(
            offset=int(data["offset"]),
            type=str(data["type"]),
            id=str(data["id"]),
            group=str(data["group"]),
            attempt=int(data.get("attempt") or 0),
            at=float(data.get("at") or 0.0),
            result=data.get("result"),
            error=data.get("error"),
            worker=data.get("worker"),
            pod=data.get("pod"),
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise MawexError(f"malformed result event: {data!r:.200}") from exc


def outcome_of(task: TaskResult) -> Any:
    """A terminal task's result, or the matching :class:`TaskFailed` subclass raised."""
    match task.status:
        case TaskStatus.COMPLETED:
            return task.result
        case TaskStatus.CANCELLED:
            raise TaskCancelled(task.group, task.id, task.error, "cancelled")
        case TaskStatus.EXPIRED:
            raise TaskExpired(task.group, task.id, task.error, "expired")
        case _:
            raise TaskFailed(task.group, task.id, task.error, str(task.status))


def task_body(task: Mapping[str, Any], group: str | None, index: int) -> dict[str, Any]:
    """One element of a batch, checked, with its id and group filled in."""
    if not isinstance(task, Mapping):
        raise Rejected(f"task #{index} is not a mapping: {task!r:.100}")
    unknown = set(task) - TASK_FIELDS
    if unknown:
        raise Rejected(f"task #{index}: unknown field(s) {', '.join(sorted(unknown))}")
    task_group = task.get("group")
    if task_group is None:
        task_group = group
    if task_group is None:
        raise Rejected(f"task #{index} has no group and no default group was given")
    return request_body(
        task_group,
        task.get("payload"),
        id=task.get("id"),
        max_attempts=task.get("max_attempts"),
        timeout_s=task.get("timeout_s"),
    )


def request_body(
    group: str,
    payload: Any,
    *,
    id: str | None,
    max_attempts: int | None,
    timeout_s: float | None,
) -> dict[str, Any]:
    """The body of ``POST /v1/tasks`` (and a batch element); a missing id becomes a uuid4."""
    body: dict[str, Any] = {
        "id": check_id(uuid.uuid4().hex if id is None else id),
        "group": check_name(group),
        "payload": payload,
    }
    if max_attempts is not None:
        body["max_attempts"] = max_attempts
    if timeout_s is not None:
        body["timeout_s"] = timeout_s
    return body


def submission(
    group: str,
    payload: Any = None,
    *,
    id: str | None = None,
    max_attempts: int | None = None,
    timeout_s: float | None = None,
) -> Submission:
    """A ``submit`` call's task, ready to send; raises :class:`Rejected` for bad input."""
    # The id is fixed here, before any retry: a resend is then a harmless duplicate.
    body = request_body(group, payload, id=id, max_attempts=max_attempts, timeout_s=timeout_s)
    return Submission(body, encode_json(body), named=id is not None)


W = TypeVar("W")


def take_batch(
    waiting: deque[tuple[Submission, W]], limit: int, skip: Callable[[W], bool]
) -> list[tuple[Submission, W]]:
    """Pop the next batch off ``waiting``: in order, at most ``limit`` tasks and about
    :data:`COALESCE_BYTES` (one task at least), dropping those ``skip`` says are gone."""
    batch: list[tuple[Submission, W]] = []
    size = 0
    while waiting and len(batch) < limit:
        item, waiter = waiting[0]
        if skip(waiter):
            waiting.popleft()
            continue
        size += len(item.content) + 1
        if batch and size > COALESCE_BYTES:
            break
        batch.append(waiting.popleft())
    return batch


#: Where the master names the culprit of a rejected batch: ``tasks[3]: …``, ``$.tasks[3].…``.
_BATCH_ITEM = re.compile(r"\btasks\[(\d+)\]")


def _dedupe(part: Sequence[Submission]) -> tuple[list[int], list[int | None]]:
    """Positions in ``part`` of each (group, id)'s first submission, and for every
    submission the index among those firsts of the one it repeats (None for a first)."""
    firsts: list[int] = []
    seen: dict[tuple[str, str], int] = {}
    repeats: list[int | None] = []
    for position, item in enumerate(part):
        index = seen.get(item.key)
        if index is None:
            seen[item.key] = len(firsts)
            firsts.append(position)
        repeats.append(index)
    return firsts, repeats


def duplicate_flags(data: Mapping[str, Any], sent: Sequence[Submission]) -> list[bool]:
    """Which tasks of an accepted batch the master already had.

    A master lists them (``duplicate_indexes``, asked for by the client). From a
    master that answers with counts only, none, all, or exactly the ones whose id
    the caller chose (a generated id is new unless an earlier try of the same batch
    got through, and then they all are) are told apart; should only some of the
    caller-chosen ids be known, those all count as duplicates.
    """
    listed = data.get("duplicate_indexes")
    if isinstance(listed, list):
        flags = [False] * len(sent)
        for index in listed:
            if isinstance(index, int) and 0 <= index < len(sent):
                flags[index] = True
        return flags
    duplicates = int(data.get("duplicates", 0))
    if duplicates <= 0:
        return [False] * len(sent)
    if duplicates >= len(sent):
        return [True] * len(sent)
    return [item.named for item in sent]


def _task_path(group: str, id: str) -> str:
    return f"/v1/tasks/{quote(check_name(group), safe='')}/{quote(check_id(id), safe='')}"


def _fmt(seconds: float) -> str:
    return f"{round(seconds, 3):g}"


def _chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _tls_untrusted(error: BaseException) -> bool:
    """Whether ``error`` is a refused TLS certificate (anywhere in its cause chain)."""
    seen: BaseException | None = error
    for _ in range(10):
        if seen is None:
            break
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return "CERTIFICATE_VERIFY_FAILED" in str(error)


def _all_untrusted(attempt: Attempt, urls: Sequence[str]) -> bool:
    reasons = [attempt.history.get(url, "") for url in urls]
    return all(reason.startswith("TLS certificate not trusted") for reason in reasons)


def http_options(
    *, token: str | None, ca: str | os.PathLike[str] | None, timeout: float | None
) -> dict[str, Any]:
    """Keyword arguments for ``httpx.Client`` / ``httpx.AsyncClient``."""
    headers = {"user-agent": "mawex-client"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    options: dict[str, Any] = {"headers": headers, "timeout": httpx.Timeout(timeout)}
    if ca is not None:
        # Reads the bundle once, here; httpx deprecates verify=<path>.
        options["verify"] = ssl.create_default_context(cafile=os.fspath(ca))
    return options


# -- the flows ----------------------------------------------------------------------------------


class ClientCore:
    """Everything :class:`mawex.Client` and :class:`mawex.AsyncClient` do, minus the IO.

    ``clock`` (monotonic seconds) and ``rng`` (backoff jitter) are injectable for tests.
    """

    def __init__(
        self,
        masters: str | Sequence[str],
        *,
        timeout: float | None = 10.0,
        failover_timeout: float = FAILOVER_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.failover = Failover(parse_masters(masters))
        self.timeout = timeout
        self.failover_timeout = failover_timeout
        self.clock = clock
        self.rng = rng or random.Random()
        #: Most tasks :meth:`submit_each` puts in one batch (lowered when the master says 413).
        self.coalesce_limit = BATCH_SIZE

    def _hold(self, wait: float) -> httpx.Timeout:
        """The timeout of a request the master may hold for ``wait`` seconds."""
        return _hold_timeout(self.timeout, wait)

    def call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: Any = None,
        content: bytes | None = None,
        wait: float = 0.0,
    ) -> Call[Any]:
        """One request with failover; returns the decoded JSON body of the 2xx answer.

        The request body is ``body`` as JSON, or ``content`` already encoded.
        """
        if body is not None:
            content = encode_json(body)
        timeout = self._hold(wait) if wait else None
        now = self.clock()
        attempt = Attempt(
            self.failover, deadline=now + self.failover_timeout, started=now, rng=self.rng
        )
        while True:
            outcome = yield Send(method, attempt.url + path, params, content, timeout)
            if isinstance(outcome, httpx.Response):
                if outcome.is_success:
                    self.failover.prefer(attempt.url)
                    return decode_body(outcome)
                error = error_from_response(outcome)
                if isinstance(error, NotLeader):
                    hint = error.leader if error.leader != attempt.url else None
                    reason = f"not leader, leader {error.leader or 'unknown'}"
                    delay = attempt.fail(reason, self.clock(), hint)
                elif outcome.status_code >= 500:
                    delay = attempt.fail(str(error), self.clock())
                else:
                    self.failover.prefer(attempt.url)  # It answered: it is alive.
                    raise error
            else:
                reason = type(outcome).__name__ + (f": {outcome}" if str(outcome) else "")
                untrusted = outcome is not None and _tls_untrusted(outcome)
                if untrusted:
                    reason = f"TLS certificate not trusted: {outcome}"
                delay = attempt.fail(reason, self.clock())
                if untrusted and _all_untrusted(attempt, self.failover.urls):
                    # Not a passing failure: retrying cannot help, so say so at once.
                    raise Unavailable(
                        "no master's TLS certificate is trusted; give the CA bundle that "
                        f"signed it (ca=, --ca, MAWEX_CA): {reason}"
                    )
            if delay > 0:
                yield Sleep(delay)

    def submit(
        self,
        group: str,
        payload: Any = None,
        *,
        id: str | None = None,
        max_attempts: int | None = None,
        timeout_s: float | None = None,
    ) -> Call[SubmitReceipt]:
        item = submission(group, payload, id=id, max_attempts=max_attempts, timeout_s=timeout_s)
        return (yield from self.submit_one(item))

    def submit_one(self, item: Submission) -> Call[SubmitReceipt]:
        """``POST /v1/tasks`` of one prepared submission."""
        data = _dict((yield from self.call("POST", "/v1/tasks", content=item.content)), "receipt")
        return SubmitReceipt(
            id=str(data.get("id", item.body["id"])),
            group=str(data.get("group", item.body["group"])),
            duplicate=bool(data.get("duplicate", False)),
        )

    def submit_each(self, items: Sequence[Submission]) -> Call[list[SubmitOutcome]]:
        """Submit waiting ``submit`` calls' tasks together, in order; one outcome each.

        One task goes alone (``POST /v1/tasks``), more in one ``POST /v1/tasks/batch``
        (a repeated (group, id) is sent once; the repeats are duplicates). Each outcome
        is what :meth:`submit` would have returned or raised for that task:

        - the batch is retried, redirected and backed off exactly as a single request;
          if it still fails (:class:`Unavailable`), so does every task not yet sent;
        - a batch the master rejects changed nothing (all or nothing), so it is split
          and sent again: around the task the error names (that one alone, so its
          caller gets the error a single submit gets), else in halves, down to single
          requests; a batch too large lowers :attr:`coalesce_limit` for the next ones.
        """
        outcomes: list[SubmitOutcome | None] = [None] * len(items)
        segments: deque[tuple[int, int]] = deque([(0, len(items))])
        while segments:
            start, stop = segments.popleft()
            part = items[start:stop]
            try:
                if len(part) == 1:
                    outcomes[start] = yield from self.submit_one(part[0])
                else:
                    outcomes[start:stop] = yield from self._submit_batch(part)
                continue
            except (Unauthorized, Unavailable) as exc:
                # No smaller request does better: this and every later task fail alike.
                failed: MawexError = exc
            except Rejected as exc:
                if len(part) == 1:
                    outcomes[start] = exc
                    continue
                segments.extendleft(reversed(self._split(part, start, exc)))
                continue
            except MawexError as exc:
                failed = exc
            for index in range(start, len(items)):
                if outcomes[index] is None:
                    outcomes[index] = failed
            break
        return [outcome for outcome in outcomes if outcome is not None]

    def _submit_batch(self, part: Sequence[Submission]) -> Call[list[SubmitOutcome]]:
        firsts, repeats = _dedupe(part)
        sent = [part[position] for position in firsts]
        content = b'{"tasks":[' + b",".join(item.content for item in sent) + b"]}"
        data = yield from self.call(
            "POST", "/v1/tasks/batch", params={"duplicate_indexes": "1"}, content=content
        )
        flags = duplicate_flags(_dict(data, "batch receipt"), sent)
        first_flags = iter(flags)  # the firsts are in the order of ``part``
        receipts: list[SubmitOutcome] = []
        for item, repeat in zip(part, repeats, strict=True):
            duplicate = True if repeat is not None else next(first_flags)
            receipts.append(SubmitReceipt(item.body["id"], item.body["group"], duplicate))
        return receipts

    def _split(
        self, part: Sequence[Submission], start: int, error: Rejected
    ) -> list[tuple[int, int]]:
        """How to resend a rejected batch ``part`` (at ``start``): index ranges, in order."""
        match = _BATCH_ITEM.search(str(error))
        firsts, _ = _dedupe(part)
        if match is not None and int(match[1]) < len(firsts):
            at = start + firsts[int(match[1])]
            pieces = [(start, at), (at, at + 1), (at + 1, start + len(part))]
            return [(a, b) for a, b in pieces if a < b]
        half = len(part) // 2
        if isinstance(error, TooLarge):
            self.coalesce_limit = min(self.coalesce_limit, half)  # The master caps batches lower.
        return [(start, start + half), (start + half, start + len(part))]

    def submit_many(
        self,
        tasks: Iterable[Mapping[str, Any]],
        *,
        group: str | None = None,
        chunk_size: int = BATCH_SIZE,
    ) -> Call[BatchReceipt]:
        if chunk_size < 1:
            raise ConfigError("chunk_size must be at least 1")
        accepted = duplicates = 0
        size = chunk_size
        bodies = (task_body(task, group, i) for i, task in enumerate(tasks))
        for chunk in _chunks(bodies, chunk_size):
            while chunk:
                part = chunk[:size]
                try:
                    data = yield from self.call("POST", "/v1/tasks/batch", body={"tasks": part})
                except TooLarge:
                    if len(part) == 1:
                        raise
                    size = max(1, len(part) // 2)  # The master caps batches lower: adapt.
                    continue
                data = _dict(data, "batch receipt")
                accepted += int(data.get("accepted", 0))
                duplicates += int(data.get("duplicates", 0))
                chunk = chunk[len(part) :]
        return BatchReceipt(accepted=accepted, duplicates=duplicates)

    def get(self, group: str, id: str) -> Call[TaskResult]:
        return parse_task_result((yield from self.call("GET", _task_path(group, id))))

    def cancel(self, group: str, id: str) -> Call[TaskResult]:
        return parse_task_result((yield from self.call("DELETE", _task_path(group, id))))

    def run(
        self,
        group: str,
        payload: Any = None,
        *,
        id: str | None = None,
        max_attempts: int | None = None,
        timeout_s: float | None = None,
        timeout: float | None = None,
    ) -> Call[Any]:
        """Submit one task and wait for its result: one ``POST /v1/tasks?wait=…``, then
        long polls (as :meth:`result`) if the task has not ended within it."""
        item = submission(group, payload, id=id, max_attempts=max_attempts, timeout_s=timeout_s)
        deadline = None if timeout is None else self.clock() + max(0.0, timeout)
        wait = LONG_POLL_CAP if timeout is None else min(LONG_POLL_CAP, max(0.0, timeout))
        params = {"wait": _fmt(wait)} if wait > 0 else None
        data = _dict(
            (
                yield from self.call(
                    "POST", "/v1/tasks", params=params, content=item.content, wait=wait
                )
            ),
            "receipt",
        )
        if isinstance(data.get("task"), dict):
            task = parse_task_result(data["task"])
            if task.done:
                return outcome_of(task)
        return (yield from self._result(item.body["group"], item.body["id"], deadline, timeout))

    def result(self, group: str, id: str, *, timeout: float | None = None) -> Call[Any]:
        deadline = None if timeout is None else self.clock() + max(0.0, timeout)
        return (yield from self._result(group, id, deadline, timeout))

    def _result(
        self, group: str, id: str, deadline: float | None, timeout: float | None
    ) -> Call[Any]:
        """Long polls until the task ends or ``deadline``; ``timeout`` is for the error."""
        path = _task_path(group, id)
        pause = _Pause()
        while True:
            started = self.clock()
            wait = LONG_POLL_CAP if deadline is None else min(LONG_POLL_CAP, deadline - started)
            params = {"wait": _fmt(wait)} if wait > 0 else None
            body = yield from self.call("GET", path, params=params, wait=max(wait, 0.0))
            task = parse_task_result(body)
            if task.done:
                return outcome_of(task)
            now = self.clock()
            if deadline is not None and now >= deadline:
                raise ResultTimeout(f"task {group}/{id} still {task.status} after {timeout:g}s")
            delay = pause.after(now - started, wait)
            if delay:
                yield Sleep(delay if deadline is None else min(delay, deadline - now))

    def state(self) -> Call[dict[str, Any]]:
        data = _dict((yield from self.call("GET", "/v1/state")), "state")
        if data.get("leader") is not False:
            return data
        # Any master can answer, but only the leader's view is current: look for it once.
        for url in self.failover.urls[1:]:
            outcome = yield Send("GET", url + "/v1/state")
            if isinstance(outcome, httpx.Response) and outcome.is_success:
                try:
                    other = decode_body(outcome)
                except MawexError:
                    continue
                if isinstance(other, dict) and other.get("leader") is True:
                    self.failover.prefer(url)
                    return other
        return data

    def results(
        self, from_offset: int = 0, *, follow: bool = True, limit: int = 1000
    ) -> Flow[None]:
        if from_offset < 0 or limit < 1:
            raise Rejected("from_offset must be >= 0 and limit >= 1")
        position = from_offset
        pause = _Pause()
        while True:
            params = {"from": str(position), "limit": str(limit)}
            wait = LONG_POLL_CAP if follow else 0.0
            if follow:
                params["wait"] = _fmt(wait)
            started = self.clock()
            data = _dict(
                (yield from self.call("GET", "/v1/results", params=params, wait=wait)), "page"
            )
            events = [parse_event(e) for e in data.get("events") or ()]
            # After a failover another master may repeat what we have seen: skip it.
            fresh = [e for e in events if e.offset >= position]
            position = max(position, int(data.get("next") or 0))
            if fresh:
                position = max(position, fresh[-1].offset + 1)
                yield Emit(fresh)
            elif not follow:
                return
            else:
                delay = pause.after(self.clock() - started, wait)
                if delay:
                    yield Sleep(delay)


class _Pause:
    """A guard against busy loops when a master answers a long poll at once with nothing new."""

    def __init__(self) -> None:
        self.delay = 0.05

    def after(self, elapsed: float, wait: float) -> float:
        if elapsed >= wait / 2:  # The master held the request: no need to slow down.
            self.delay = 0.05
            return 0.0
        delay, self.delay = self.delay, min(1.0, self.delay * 2)
        return delay


__all__ = ["BatchReceipt", "ClientCore", "Submission", "SubmitReceipt", "submission"]
