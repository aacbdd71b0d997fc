"""A fake cluster behind ``httpx.MockTransport``, and one fixture for both clients.

The fake masters share one task table and one result topic (as real masters share
a journal). Each has a role: ``leader`` serves everything, ``standby`` serves reads
and answers writes with ``503 not_leader`` and its hint, ``down`` refuses
connections. Time is virtual: long polls and the clients' sleeps advance ``clock``.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator
from contextlib import aclosing, closing
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from mawex.client import AsyncClient, Client
from mawex.model import ResultEvent

TERMINAL = {"completed", "failed", "cancelled", "expired"}


@dataclass
class FakeClock:
    now: float = 1000.0
    sleeps: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@dataclass
class FakeMaster:
    url: str
    role: str = "leader"  # leader | standby | down
    hint: str | None = None  # what a standby names as leader
    #: Scripted answers before normal service: an exception to raise, a response to
    #: return, or "lose-answer" (handle the request, then time out as if the reply was lost).
    fail_next: list[Exception | httpx.Response | str] = field(default_factory=list)
    requests: list[httpx.Request] = field(default_factory=list)


def error(status: int, code: str, detail: str, **extra: Any) -> httpx.Response:
    return httpx.Response(status, json={"error": code, "detail": detail, **extra})


@dataclass
class FakeCluster:
    clock: FakeClock = field(default_factory=FakeClock)
    masters: dict[str, FakeMaster] = field(default_factory=dict)
    tasks: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    token: str | None = None
    seq: int = 0
    max_batch: int = 10_000
    #: Batch answers list which tasks were duplicates (``duplicate_indexes``).
    per_item: bool = False
    honour_wait: bool = True
    #: Called on every task long poll with the task dict, before answering.
    on_poll: Callable[[dict[str, Any]], None] | None = None
    #: Called on every results long poll that found nothing.
    on_empty_results: Callable[[], None] | None = None

    def add(self, url: str, role: str = "leader", hint: str | None = None) -> FakeMaster:
        master = FakeMaster(url, role, hint)
        self.masters[url] = master
        return master

    @property
    def requests(self) -> list[httpx.Request]:
        return sorted(
            (r for m in self.masters.values() for r in m.requests),
            key=lambda r: r.extensions["seq"],
        )

    def add_task(self, group: str, id: str, status: str = "pending", **fields: Any) -> None:
        self.tasks[group, id] = {"id": id, "group": group, "status": status, "attempt": 1, **fields}

    def publish(self, type: str, group: str, id: str, **fields: Any) -> None:
        offset = self.events[-1]["offset"] + 1 if self.events else 0
        self.events.append(
            {"offset": offset, "type": type, "id": id, "group": group, "attempt": 1, "at": 1.5}
            | fields
        )

    # -- the transport --

    def handler(self, request: httpx.Request) -> httpx.Response:
        base = f"{request.url.scheme}://{request.url.netloc.decode()}"
        master = self.masters[base]
        request.extensions["seq"] = self.seq
        self.seq += 1
        master.requests.append(request)
        if master.role == "down":
            raise httpx.ConnectError("connection refused", request=request)
        if master.fail_next:
            failure = master.fail_next.pop(0)
            if failure == "lose-answer":
                self.route(request, master)
                raise httpx.ReadTimeout("read timed out", request=request)
            if isinstance(failure, Exception):
                raise failure
            assert isinstance(failure, httpx.Response)
            return failure
        if self.token and request.headers.get("authorization") != f"Bearer {self.token}":
            return error(401, "unauthorized", "a valid bearer token is required")
        if request.method != "GET" and master.role != "leader":
            return error(503, "not_leader", "this master is a standby", leader=master.hint)
        return self.route(request, master)

    def route(self, request: httpx.Request, master: FakeMaster) -> httpx.Response:
        path = request.url.path
        if path == "/v1/tasks" and request.method == "POST":
            return self.submit(
                json.loads(request.content), float(request.url.params.get("wait", 0))
            )
        if path == "/v1/tasks/batch":
            return self.batch(json.loads(request.content)["tasks"])
        if path == "/v1/state":
            return httpx.Response(200, json={"leader": master.role == "leader", "url": master.url})
        if path == "/v1/results":
            return self.results(request)
        _, _, _, group, id = path.split("/")
        task = self.tasks.get((group, id))
        if task is None:
            return error(404, "not_found", f"no task {group}/{id}")
        if request.method == "DELETE":
            task["status"] = "cancelled"
            return httpx.Response(200, json=task)
        if self.on_poll:
            self.on_poll(task)
        wait = float(request.url.params.get("wait", 0))
        if wait and task["status"] not in TERMINAL and self.honour_wait:
            self.clock.now += wait
        return httpx.Response(200, json=task)

    def submit(self, body: dict[str, Any], wait: float = 0.0) -> httpx.Response:
        key = (body["group"], body["id"])
        duplicate = key in self.tasks
        if not duplicate:
            self.add_task(*key, payload=body["payload"])
        receipt = {"id": key[1], "group": key[0], "status": "accepted", "duplicate": duplicate}
        if wait:  # submit and wait: answer with the task as a poll would see it
            task = self.tasks[key]
            if self.on_poll:
                self.on_poll(task)
            if task["status"] not in TERMINAL and self.honour_wait:
                self.clock.now += wait
            receipt["task"] = dict(task)
        return httpx.Response(202, json=receipt)

    def batch(self, tasks: list[dict[str, Any]]) -> httpx.Response:
        if len(tasks) > self.max_batch:
            return error(413, "too_large", f"at most {self.max_batch} tasks per batch")
        known = [i for i, t in enumerate(tasks) if (t["group"], t["id"]) in self.tasks]
        for task in tasks:
            self.tasks.setdefault((task["group"], task["id"]), task | {"status": "pending"})
        body: dict[str, Any] = {"accepted": len(tasks) - len(known), "duplicates": len(known)}
        if self.per_item:
            body["duplicate_indexes"] = known
        return httpx.Response(202, json=body)

    def results(self, request: httpx.Request) -> httpx.Response:
        start = int(request.url.params["from"])
        limit = int(request.url.params["limit"])
        page = [e for e in self.events if e["offset"] >= start][:limit]
        wait = float(request.url.params.get("wait", 0))
        if not page and wait:
            if self.on_empty_results:
                self.on_empty_results()
                page = [e for e in self.events if e["offset"] >= start][:limit]
            if not page and self.honour_wait:
                self.clock.now += wait
        nxt = page[-1]["offset"] + 1 if page else start
        return httpx.Response(200, json={"events": page, "next": nxt})


# -- one fixture, both clients --


@pytest.fixture
def cluster() -> FakeCluster:
    return FakeCluster()


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Driver:
    """The same awaitable surface over :class:`Client` and :class:`AsyncClient`."""

    def __init__(self, client: Client | AsyncClient) -> None:
        self.client = client

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.client, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            result = method(*args, **kwargs)
            return await result if inspect.isawaitable(result) else result

        return call

    async def collect(self, n: int | None = None, **kwargs: Any) -> list[ResultEvent]:
        events: list[ResultEvent] = []
        iterator = self.client.results(**kwargs)
        if isinstance(iterator, AsyncGenerator):
            async with aclosing(iterator):
                async for event in iterator:
                    events.append(event)
                    if n is not None and len(events) >= n:
                        break
        else:
            assert isinstance(iterator, Generator)
            with closing(iterator):
                for event in iterator:
                    events.append(event)
                    if n is not None and len(events) >= n:
                        break
        return events


@pytest.fixture
async def connect(cluster: FakeCluster, kind: str) -> AsyncIterator[Callable[..., Driver]]:
    """``connect("http://a,http://b", token=…)`` → a :class:`Driver` on the fake cluster."""
    clients: list[Client | AsyncClient] = []

    def make(masters: Any, **kwargs: Any) -> Driver:
        client: Client | AsyncClient
        if kind == "sync":
            client = Client(masters, transport=httpx.MockTransport(cluster.handler), **kwargs)

            def sync_sleep(seconds: float) -> None:
                cluster.clock.sleep(seconds)

            client._sleep = sync_sleep  # type: ignore[assignment]
        else:
            client = AsyncClient(masters, transport=httpx.MockTransport(cluster.handler), **kwargs)

            async def sleep(seconds: float) -> None:
                cluster.clock.sleep(seconds)

            client._sleep = sleep  # type: ignore[assignment]
        client._core.clock = cluster.clock
        clients.append(client)
        return Driver(client)

    yield make
    for client in clients:
        if isinstance(client, Client):
            client.close()
        else:
            await client.aclose()
