"""mawex: one ``mawex master`` process and 2 ``mawex worker`` processes, the public AsyncClient.

The master journals on SQLite in a temporary directory (``synchronous=full``, every
acknowledgement fsync'd, mawex's default), or ``synchronous=normal``, or a fresh
PostgreSQL database. Workers run the no-op executor ``mawex.examples.demo:echo`` in
the local sandbox, each process with ``--concurrency`` pods.
The client is ``mawex.AsyncClient``: single ``submit()`` calls with many in
flight, results read from the result topic (``client.results()``). Round trips use
the blocking ``mawex.Client.run()`` (submit and wait in one request), one call after
another from one thread, as the peers' blocking clients are used; with
``--mawex-client-busy-poll S`` that client awaits each reply without sleeping for S
seconds (``mawex.Client(busy_poll=S)``), in every variant. The ``-busy``
variants run the master with ``--busy-poll`` (:data:`BUSY_POLL` seconds); in the
``-unix`` variants the workers and the clients reach the master on a Unix socket
(``--listen unix:PATH``), to set beside peers on a Redis of a Unix socket
(``run.py --redis-unix``).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from typing import Any

import httpx
from _common import JournalSetup, Processes, free_port, wait_until

import mawex
from systems.base import READY_TIMEOUT, RESULT_TIMEOUT, AsyncSystem, Settings

GROUP = "bench"
ENQUEUE_GROUP = "bench-enqueue"
EXECUTOR = "mawex.examples.demo:echo"
TERMINAL = frozenset({"completed", "failed", "cancelled", "expired"})
#: ``mawex master --busy-poll`` of the ``-busy`` variants: a sequential round trip's
#: gaps (master → worker → master, reply → next request) are shorter than this.
BUSY_POLL = 0.0005


class Mawex(AsyncSystem):
    name = "mawex"
    #: The journal of this variant; ``None``: ``--mawex-journal``.
    journal_mode: str | None = None
    #: ``mawex master --busy-poll`` seconds (0: off, the default).
    busy_poll = 0.0
    #: ``mawex worker --sandbox-inline``: the no-op runs on the worker's loop.
    inline = False
    #: Workers and clients on the master's Unix socket instead of TCP.
    unix = False

    def __init__(self, settings: Settings, procs: Processes) -> None:
        super().__init__(settings, procs)
        opts = settings.options
        self.mode = self.journal_mode or str(opts.get("mawex_journal", "sqlite"))
        self.in_flight = int(opts.get("mawex_in_flight", 256))
        self.client_busy_poll = float(opts.get("mawex_client_busy_poll") or 0.0)
        self.concurrency = max(1, int(opts.get("mawex_concurrency", 32)))
        self.journal = JournalSetup(self.mode, settings.workdir, str(opts.get("pg_url", "")))
        self.url = ""  # what the workers and the clients use
        self.probe_url = ""  # the harness's own readiness checks (TCP)
        self.client: mawex.AsyncClient | None = None

    def config(self) -> dict[str, Any]:
        n, c = self.settings.processes, self.concurrency
        journal = {
            "sqlite": "SQLite synchronous=full",
            "sqlite-normal": "SQLite synchronous=normal",
            "postgresql": "PostgreSQL",
        }.get(self.mode, self.mode)
        busy = f", --busy-poll {self.busy_poll}" if self.busy_poll else ""
        sandbox = "--sandbox-inline" if self.inline else "local sandbox"
        where = ", on a Unix socket" if self.unix else ""
        return {
            "summary": f"1 master ({journal}{busy}{where}), {n} workers x {c} pods"
            + (f", client busy_poll {self.client_busy_poll}" if self.client_busy_poll else ""),
            "worker": f"{n} x mawex worker {EXECUTOR} --concurrency {c} ({sandbox})",
            "result": (
                f"AsyncClient: {self.in_flight} submit() in flight, results() follow; "
                "round trips: Client.run()"
                + (f" with busy_poll={self.client_busy_poll}" if self.client_busy_poll else "")
            ),
            "journal": self.mode,
            "busy_poll": self.busy_poll,
            "client_busy_poll": self.client_busy_poll,
            "inline": self.inline,
            "unix": self.unix,
            "concurrency": c,
            "in_flight": self.in_flight,
        }

    def start(self) -> None:
        self.journal.create()
        port = free_port()
        self.url = self.probe_url = f"http://127.0.0.1:{port}"
        listen = f"127.0.0.1:{port}"
        if self.unix:
            sock = self.settings.workdir / f"{self.name}.sock"
            listen += f",unix:{sock}"
            self.url = f"unix:{sock}"
        argv = [sys.executable, "-m", "mawex", "master", "--journal", self.journal.url]
        argv += ["--listen", listen, "--log-format", "json"]
        argv += ["--log-level", self.settings.log_level]
        if self.busy_poll:
            argv += ["--busy-poll", str(self.busy_poll)]
        master = self.procs.spawn(f"master-{self.name}", argv, group=True)

        def leading() -> bool:
            if not master.alive():
                raise RuntimeError(f"the master exited:\n{master.tail()}")
            try:
                return httpx.get(f"{self.probe_url}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(leading, READY_TIMEOUT, "mawex master leading")
        self.client = mawex.AsyncClient(self.url, timeout=RESULT_TIMEOUT)

    def start_workers(self) -> list[int]:
        argv = [sys.executable, "-m", "mawex", "worker", EXECUTOR, "--master", self.url]
        argv += ["--group", GROUP, "--pod", "w{i}", "--sandbox", "local"]
        argv += ["--log-format", "json", "--log-level", self.settings.log_level]
        argv += ["--concurrency", str(self.concurrency)]
        if self.inline:
            argv += ["--sandbox-inline"]
        self.spawn_workers(argv, self.settings.processes)
        expected = self.settings.processes * self.concurrency

        def connected() -> bool:
            self.check_alive()
            state = httpx.get(f"{self.probe_url}/v1/state", timeout=5).json()
            return sum(w["status"] != "disconnected" for w in state["workers"]) >= expected

        wait_until(connected, READY_TIMEOUT, f"{expected} mawex workers connected")
        return [p.pid for p in self.procs.procs if "worker" in p.name]

    def stop(self) -> None:
        self.journal.drop()

    # -- workloads ------------------------------------------------------------------

    @property
    def _client(self) -> mawex.AsyncClient:
        assert self.client is not None, "start() first"
        return self.client

    async def _submit_all(self, group: str, ids: list[str]) -> None:
        """``submit()`` every id, ``in_flight`` at a time, in order."""
        client, pending = self._client, iter(ids)

        async def submitter() -> None:
            for task_id in pending:
                await client.submit(group, None, id=task_id)

        await asyncio.gather(*(submitter() for _ in range(min(self.in_flight, len(ids)))))

    def enqueue_only(self, count: int, tag: str) -> float:
        ids = [f"{tag}-{i}" for i in range(count)]

        async def go() -> float:
            started = time.perf_counter()
            await self._submit_all(ENQUEUE_GROUP, ids)
            return time.perf_counter() - started

        seconds: float = self.run(go())
        return seconds

    def throughput(self, count: int, tag: str) -> float:
        ids = [f"{tag}-{i}" for i in range(count)]

        async def follow(start: int) -> float:
            left = set(ids)
            events = self._client.results(from_offset=start, follow=True)
            async with contextlib.aclosing(events):
                async for event in events:
                    if event.type in TERMINAL and event.group == GROUP and event.id in left:
                        if event.type != "completed":
                            raise RuntimeError(f"task {event.id}: {event.type} {event.error}")
                        left.discard(event.id)
                        if not left:
                            break
            return time.perf_counter()

        async def go() -> float:
            start = int((await self._client.state())["topic_next"])
            started = time.perf_counter()
            follower = asyncio.create_task(follow(start))
            await self._submit_all(GROUP, ids)
            done = await asyncio.wait_for(follower, RESULT_TIMEOUT + count / 100)
            return done - started

        seconds: float = self.run(go())
        return seconds

    def round_trips(self, count: int, tag: str) -> list[float]:
        clock, samples = time.perf_counter, []
        polling = {"busy_poll": self.client_busy_poll} if self.client_busy_poll else {}
        with mawex.Client(self.url, timeout=RESULT_TIMEOUT, **polling) as client:
            for i in range(count):
                started = clock()
                client.run(GROUP, None, id=f"{tag}-{i}", timeout=RESULT_TIMEOUT)
                samples.append(clock() - started)
        return samples

    def close(self) -> None:
        if self.client is not None:
            self.run(self.client.aclose())
        super().close()


class MawexNormal(Mawex):
    name = "mawex-normal"
    journal_mode = "sqlite-normal"


class MawexBusy(Mawex):
    name = "mawex-busy"
    journal_mode = "sqlite"
    busy_poll = BUSY_POLL


class MawexNormalBusy(Mawex):
    name = "mawex-normal-busy"
    journal_mode = "sqlite-normal"
    busy_poll = BUSY_POLL


class MawexBusyInline(MawexBusy):
    name = "mawex-busy-inline"
    inline = True


class MawexNormalBusyInline(MawexNormalBusy):
    name = "mawex-normal-busy-inline"
    inline = True


class MawexPostgres(Mawex):
    name = "mawex-pg"
    journal_mode = "postgresql"


class MawexUnix(Mawex):
    name = "mawex-unix"
    journal_mode = "sqlite"
    unix = True


class MawexBusyInlineUnix(MawexBusyInline):
    name = "mawex-busy-inline-unix"
    unix = True


class MawexNormalBusyInlineUnix(MawexNormalBusyInline):
    name = "mawex-normal-busy-inline-unix"
    unix = True
