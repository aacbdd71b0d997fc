"""Shared helpers of the security tests: a real master on a real port, in a thread.

:class:`ThreadMaster` runs a :class:`mawex.LocalMaster` (uvicorn, real sockets) on
an event loop of its own, so plain synchronous test code (httpx, websockets'
sync client, hypothesis, schemathesis) can talk to it as any remote peer would.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from mawex.core.decide import Limits
from mawex.journal.base import Journal
from mawex.journal.memory import MemoryJournal
from mawex.local import LocalMaster

T = TypeVar("T")

CLIENT_TOKEN = "client-tok-Zq7RwX3p9LmN"
WORKER_TOKEN = "worker-tok-Hc4VbK8sTe2J"


class ThreadMaster:
    """A LocalMaster serving on its own event loop in a daemon thread."""

    def __init__(self, journal: str | Journal | None = None, **options: Any) -> None:
        options.setdefault(
            "limits", Limits(heartbeat_s=0.2, worker_timeout_s=2.0, worker_grace_s=0.5)
        )
        self.master = LocalMaster(journal or MemoryJournal(), **options)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    @property
    def url(self) -> str:
        return self.master.url

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run ``coro`` on the master's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[[], T], timeout: float = 10.0) -> T:
        """Call ``fn`` on the master's loop (to read engine state without races)."""

        async def wrapper() -> T:
            return fn()

        return self.run(wrapper(), timeout)

    def start(self) -> ThreadMaster:
        self.thread.start()
        self.run(self.master.start())
        return self

    def stop(self) -> None:
        try:
            self.run(self.master.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            if not self.thread.is_alive():
                self.loop.close()

    def __enter__(self) -> ThreadMaster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def counts(url: str, token: str | None = None) -> dict[str, Any]:
    """What a rejected request must not change: task counts, groups, topic end, workers."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    state = httpx.get(f"{url}/v1/state", headers=headers, timeout=10).json()
    return {
        "counts": state["counts"],
        "groups": state["groups"],
        "workers": sorted((w["id"], w["status"], w["task"]) for w in state["workers"]),
        "topic": _topic_end(url, headers),
    }


def _topic_end(url: str, headers: dict[str, str]) -> int:
    offset = 0
    while True:
        params = {"from": offset, "limit": 10000}
        body = httpx.get(f"{url}/v1/results", params=params, headers=headers, timeout=10).json()
        if not body["events"]:
            return int(body["next"])
        offset = body["next"]


def wait_until(check: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def master() -> Iterator[ThreadMaster]:
    """A master without tokens on a memory journal."""
    with ThreadMaster() as running:
        yield running


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mawex.db'}"


class ThreadWorker:
    """A real :class:`mawex.worker.runner.Worker` (local sandbox) on a ThreadMaster's loop."""

    def __init__(
        self,
        host: ThreadMaster,
        executor: str,
        *,
        group: str,
        pod: str,
        masters: str | None = None,
        sandbox: str = "local",
        **options: Any,
    ) -> None:
        from mawex.sandbox import create_sandbox
        from mawex.worker.runner import Worker

        self.host = host

        def build() -> Worker:
            return Worker(
                masters=masters or host.url,
                group=group,
                pod=pod,
                sandbox=create_sandbox(sandbox, executor),
                backoff_initial=0.05,
                backoff_max=0.5,
                **options,
            )

        self.worker = host.call(build)
        self.future = asyncio.run_coroutine_threadsafe(self.worker.run(), host.loop)

    def wait_connected(self, timeout: float = 20.0) -> None:
        self.host.run(asyncio.wait_for(self.worker.connected.wait(), timeout), timeout + 5)

    def stop(self) -> None:
        self.host.call(lambda: self.worker.stop(drain=False))
        self.future.result(30)

    def __enter__(self) -> ThreadWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- raw peers ------------------------------------------------------------------------


def ws_url(url: str, path: str = "/v1/worker") -> str:
    return url.replace("http://", "ws://").replace("https://", "wss://") + path


def hello(worker: str = "fw-1", group: str = "g", pod: str = "p", **fields: Any) -> str:
    return json.dumps(
        {"type": "hello", "worker": worker, "group": group, "pod": pod, **fields},
        separators=(",", ":"),
    )


def raw_socket(url: str) -> socket.socket:
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def read_response(sock: socket.socket, timeout: float = 10.0) -> tuple[int, bytes, bool]:
    """(status, body, closed) of the next HTTP response on ``sock`` (0 if none came)."""
    sock.settimeout(timeout)
    data = b""
    closed = False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except OSError:
            closed = True
            break
        if not chunk:
            closed = True
            break
        data += chunk
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            length = re.search(rb"(?i)content-length:\s*(\d+)", head)
            if length and len(body) >= int(length.group(1)):
                break
    if not data:
        return 0, b"", closed
    status = int(data.split(b" ", 2)[1])
    return status, data.partition(b"\r\n\r\n")[2], closed


def is_closed(sock: socket.socket, timeout: float) -> bool:
    """Whether the peer closes ``sock`` within ``timeout`` (any data is read and dropped)."""
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not sock.recv(65536):
                return True
        except TimeoutError:
            return False
        except OSError:
            return True
    return False
