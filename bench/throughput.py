"""End-to-end throughput and round-trip latency of a real mawex cluster on loopback.

Starts one ``mawex master`` process (SQLite journal in a temporary directory by
default) and ``--workers`` ``mawex worker`` processes, each in a pod of its own,
running the no-op executor ``mawex.examples.demo:echo`` on a ``null`` payload,
then measures, after a warm-up:

- ``latency``: sequential single tasks: ``POST /v1/tasks`` then
  ``GET /v1/tasks/{group}/{id}?wait=5`` until terminal (p50/p99/mean);
- ``e2e``: ``--tasks`` tasks in batches (``POST /v1/tasks/batch``) from a few
  concurrent submitters while a follower long-polls ``GET /v1/results``;
  tasks/s = N / (first submit → last terminal event seen by the follower);
- ``enqueue``: submit-only rates to a group without workers, one ``POST`` per
  task (many in flight) and in batches. With ``--client mawex`` the single-task
  rate is that of ``mawex.AsyncClient.submit``, one call per task with
  ``--in-flight`` calls (default 1000) in flight, which the client coalesces
  into batch requests; it also reports the requests it took.

Prints one ``name value`` line per figure (``--json FILE`` writes them too) and
exits non-zero if a task is lost or does not complete. Every process it starts
is stopped by PID, also on failure. ``--profile DIR`` records the master and
the first worker with py-spy during the e2e phase (see bench/README.md).

Run: ``.venv/bin/python bench/throughput.py [--tasks N] [--workers 4]
[--journal sqlite|sqlite-normal|postgresql|memory] [--client httpx|raw|mawex] [--json out.json]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import msgspec
from _common import (
    PROBE,
    JournalSetup,
    Proc,
    Processes,
    free_port,
    git_describe,
    http_request,
    percentile,
    read_http_response,
)

import mawex

GROUP = "bench"
ENQUEUE_GROUP = "bench-enqueue"
EXECUTOR = "mawex.examples.demo:echo"
TERMINAL = frozenset({"completed", "failed", "cancelled", "expired"})
JOURNALS = ("sqlite", "sqlite-normal", "postgresql", "memory")
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"


# -- results ------------------------------------------------------------------------


@dataclass
class Figures:
    """Figures in the order they were measured; printed as ``name value`` lines."""

    values: dict[str, Any] = field(default_factory=dict)

    def put(self, name: str, value: Any, *, show: bool = True) -> None:
        if isinstance(value, float):
            value = round(value, 3)
        self.values[name] = value
        if show:
            print(f"{name} {value}", flush=True)


# -- HTTP clients -------------------------------------------------------------------


class Http(Protocol):
    """The little the benchmark needs of an HTTP client: a status and a body."""

    async def request(
        self, method: str, path: str, body: bytes | None = None, timeout: float = 30.0
    ) -> tuple[int, bytes]: ...

    async def aclose(self) -> None: ...


class HttpxHttp:
    """``httpx.AsyncClient``, as ``mawex.AsyncClient`` uses it."""

    def __init__(self, base: str, connections: int) -> None:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        self._client = httpx.AsyncClient(base_url=base, limits=limits, timeout=30.0)

    async def request(
        self, method: str, path: str, body: bytes | None = None, timeout: float = 30.0
    ) -> tuple[int, bytes]:
        headers = {"content-type": "application/json"} if body is not None else None
        response = await self._client.request(
            method, path, content=body, headers=headers, timeout=timeout
        )
        return response.status_code, response.content

    async def aclose(self) -> None:
        await self._client.aclose()


class RawHttp:
    """A minimal keep-alive HTTP/1.1 client on asyncio streams (Content-Length bodies only).

    It costs the benchmark process a fraction of what httpx does per request, so
    that on a 2-core machine the client steals less CPU from the master. A
    connection idle for longer than :attr:`IDLE_S` is dropped (uvicorn closes
    them after 5 s), and a request whose reused connection turns out closed is
    sent once more on a fresh one (every request of the benchmark is idempotent).
    """

    IDLE_S = 3.0

    def __init__(self, base: str, connections: int) -> None:
        host_port = base.split("://", 1)[1].rstrip("/")
        host, _, port = host_port.rpartition(":")
        self._host, self._port = host, int(port)
        self._host_header = host_port.encode()
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
        self._all: list[asyncio.StreamWriter] = []
        self._slots = asyncio.Semaphore(connections)

    async def _connection(self, fresh: bool) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        now = time.monotonic()
        while self._idle and not fresh:
            reader, writer, since = self._idle.pop()
            if now - since < self.IDLE_S and not reader.at_eof():
                return reader, writer
            writer.close()
        reader, writer = await asyncio.open_connection(self._host, self._port)
        self._all.append(writer)
        return reader, writer

    async def request(
        self, method: str, path: str, body: bytes | None = None, timeout: float = 30.0
    ) -> tuple[int, bytes]:
        data = http_request(method, path, self._host_header, body)
        async with self._slots:
            try:
                return await self._exchange(data, timeout, fresh=False)
            except (asyncio.IncompleteReadError, ConnectionError):
                return await self._exchange(data, timeout, fresh=True)

    async def _exchange(self, data: bytes, timeout: float, fresh: bool) -> tuple[int, bytes]:
        reader, writer = await self._connection(fresh)
        try:
            writer.write(data)
            async with asyncio.timeout(timeout):
                status, content, closing = await read_http_response(reader)
        except BaseException:
            writer.close()
            raise
        if closing:
            writer.close()
        else:
            self._idle.append((reader, writer, time.monotonic()))
        return status, content

    async def aclose(self) -> None:
        for writer in self._all:
            writer.close()
        self._idle.clear()


def make_http(kind: str, base: str, connections: int) -> Http:
    return RawHttp(base, connections) if kind == "raw" else HttpxHttp(base, connections)


class CountingTransport(httpx.AsyncBaseTransport):
    """httpx's own transport, counting the requests that go through it."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.requests = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


# -- processes ----------------------------------------------------------------------


def serve_memory_master(listen: str) -> None:
    """``--serve-memory-master HOST:PORT``: a master on a MemoryJournal, like ``mawex master``."""
    from mawex.journal.memory import MemoryJournal
    from mawex.local import LocalMaster
    from mawex.logs import setup_logging

    setup_logging("info", "json")

    async def main() -> None:
        master = LocalMaster(MemoryJournal(), listen=listen, wait_leader=False)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await master.start()
        await stop.wait()
        await master.stop()

    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())


# -- the cluster ----------------------------------------------------------------------


@dataclass
class Cluster:
    url: str
    master: Proc
    workers: list[Proc]
    procs: Processes

    def cpu(self) -> tuple[float, float]:
        """CPU seconds so far of (the master, all workers)."""
        return self.master.cpu_seconds(), sum(w.cpu_seconds() for w in self.workers)


def start_cluster(args: argparse.Namespace, procs: Processes, journal: JournalSetup) -> Cluster:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    listen = f"127.0.0.1:{port}"
    python = sys.executable
    # ``mawex ...``, or the same through bench/whatif.py with experimental patches applied
    mawex = [python, "-m", "mawex"]
    env: dict[str, str] = {}
    if args.whatif:
        mawex = [python, str(Path(__file__).with_name("whatif.py"))]
        env["MAWEX_BENCH_WHATIF"] = args.whatif
    if journal.mode == "memory":
        argv = [python, os.path.abspath(__file__), "--serve-memory-master", listen]
    else:
        argv = [*mawex, "master", "--journal", journal.url, "--listen", listen]
        argv += ["--log-format", "json", "--log-level", args.log_level]
    master = procs.spawn("master", argv, env)
    deadline = time.monotonic() + 60
    while True:
        if not master.alive():
            raise RuntimeError(f"the master exited:\n{master.tail()}")
        try:
            if PROBE.get(f"{url}/readyz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"the master did not lead within 60 s:\n{master.tail()}")
        time.sleep(0.05)
    workers = []
    for i in range(args.workers):
        argv = [*mawex, "worker", EXECUTOR, "--master", url, "--group", GROUP]
        argv += ["--pod", f"pod-{i + 1}", "--sandbox", "local"]
        argv += ["--concurrency", str(args.concurrency)]
        argv += ["--log-format", "json", "--log-level", args.log_level]
        workers.append(procs.spawn(f"worker-{i + 1}", argv, env))
    while True:
        state = PROBE.get(f"{url}/v1/state", timeout=5).json()
        connected = [w for w in state["workers"] if w["status"] != "disconnected"]
        if len(connected) >= args.workers * args.concurrency:
            break
        for worker in workers:
            if not worker.alive():
                raise RuntimeError(f"{worker.name} exited:\n{worker.tail()}")
        if time.monotonic() > deadline:
            expected = args.workers * args.concurrency
            raise TimeoutError(f"only {len(connected)} of {expected} workers connected")
        time.sleep(0.05)
    return Cluster(url, master, workers, procs)


# -- measurements ---------------------------------------------------------------------


class _Event(msgspec.Struct):
    offset: int
    type: str
    id: str
    group: str


class _Page(msgspec.Struct):
    events: list[_Event]
    next: int


_page_decoder = msgspec.json.Decoder(_Page)
_encode = msgspec.json.encode


def client_cpu() -> float:
    times = os.times()
    return times.user + times.system


async def journal_metrics(http: Http) -> dict[str, float]:
    """Engine journal counters from ``/metrics``."""
    _, body = await http.request("GET", "/metrics")
    wanted = {
        "mawex_journal_appends_total": "appends",
        "mawex_journal_appended_events_total": "events",
        "mawex_journal_append_seconds_total": "seconds",
        "mawex_snapshots_total": "snapshots",
    }
    found: dict[str, float] = {}
    for line in body.decode().splitlines():
        name, _, value = line.partition(" ")
        if name in wanted:
            found[wanted[name]] = float(value)
    return found


@dataclass
class Phase:
    """CPU and journal counters around a phase, reported per task."""

    name: str
    cluster: Cluster
    http: Http
    started: dict[str, float] = field(default_factory=dict)

    async def __aenter__(self) -> Phase:
        master, workers = self.cluster.cpu()
        self.started = {"master": master, "workers": workers, "client": client_cpu()}
        self.started.update({f"j_{k}": v for k, v in (await journal_metrics(self.http)).items()})
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def report(self, figures: Figures, tasks: int, wall: float) -> None:
        master, workers = self.cluster.cpu()
        used = {
            "master": master - self.started["master"],
            "workers": workers - self.started["workers"],
            "client": client_cpu() - self.started["client"],
        }
        for who, seconds in used.items():
            figures.put(f"{self.name}_cpu_{who}_us_per_task", seconds / tasks * 1e6)
        figures.put(f"{self.name}_cpu_master_utilisation", used["master"] / wall)
        journal = await journal_metrics(self.http)
        appends = journal.get("appends", 0) - self.started.get("j_appends", 0)
        events = journal.get("events", 0) - self.started.get("j_events", 0)
        seconds = journal.get("seconds", 0) - self.started.get("j_seconds", 0)
        if appends:
            figures.put(f"{self.name}_journal_appends", int(appends))
            figures.put(f"{self.name}_journal_events_per_append", events / appends)
            figures.put(f"{self.name}_journal_append_ms_mean", seconds / appends * 1e3)
            figures.put(f"{self.name}_journal_append_busy_fraction", seconds / wall)
        snapshots = journal.get("snapshots", 0) - self.started.get("j_snapshots", 0)
        figures.put(f"{self.name}_snapshots", int(snapshots))


class Lost(Exception):
    """A task did not reach a terminal state in time, or did not complete."""


async def round_trip(http: Http, task_id: str) -> tuple[float, float, str]:
    """Submit one task and wait for it: (ack seconds, total seconds, final status)."""
    body = _encode({"id": task_id, "group": GROUP, "payload": None})
    started = time.perf_counter()
    status, content = await http.request("POST", "/v1/tasks", body)
    acked = time.perf_counter()
    if status != 202:
        raise RuntimeError(f"submit of {task_id}: HTTP {status} {content[:200]!r}")
    task: dict[str, Any] = {"status": "pending"}
    while task["status"] not in TERMINAL:
        status, content = await http.request(
            "GET", f"/v1/tasks/{GROUP}/{task_id}?wait=5", timeout=15
        )
        if status != 200:
            raise RuntimeError(f"get of {task_id}: HTTP {status} {content[:200]!r}")
        task = msgspec.json.decode(content)
        if time.perf_counter() - started > 60:
            raise Lost(f"task {task_id} still {task['status']} after 60 s")
    return acked - started, time.perf_counter() - started, str(task["status"])


async def measure_latency(
    cluster: Cluster, http: Http, figures: Figures, count: int, warmup: int
) -> None:
    for i in range(warmup):
        await round_trip(http, f"warm-{i}")
    acks: list[float] = []
    totals: list[float] = []
    async with Phase("latency", cluster, http) as phase:
        started = time.perf_counter()
        for i in range(count):
            ack, total, status = await round_trip(http, f"lat-{i}")
            if status != "completed":
                raise Lost(f"lat-{i} ended {status}")
            acks.append(ack)
            totals.append(total)
        wall = time.perf_counter() - started
        figures.put("latency_tasks", count)
        for name, samples in (("roundtrip", totals), ("submit_ack", acks)):
            figures.put(f"latency_{name}_p50_ms", percentile(samples, 0.5) * 1e3)
            figures.put(f"latency_{name}_p99_ms", percentile(samples, 0.99) * 1e3)
            figures.put(f"latency_{name}_mean_ms", statistics.fmean(samples) * 1e3)
        await phase.report(figures, count, wall)


async def topic_next(http: Http) -> int:
    _, body = await http.request("GET", "/v1/state")
    return int(msgspec.json.decode(body)["topic_next"])


async def follow(
    http: Http, start: int, ids: set[str], deadline: float
) -> tuple[float, dict[str, str], int]:
    """Read the topic from ``start`` until every id has a terminal event.

    Returns when the last one was seen, each id's terminal type, and the number of
    long-poll requests it took.
    """
    position = start
    outcome: dict[str, str] = {}
    last = time.perf_counter()
    polls = 0
    while len(outcome) < len(ids) and time.perf_counter() < deadline:
        polls += 1
        status, body = await http.request(
            "GET", f"/v1/results?from={position}&limit=10000&wait=5", timeout=20
        )
        if status != 200:
            raise RuntimeError(f"results: HTTP {status} {body[:200]!r}")
        page = _page_decoder.decode(body)
        for event in page.events:
            if event.type in TERMINAL and event.group == GROUP and event.id in ids:
                outcome.setdefault(event.id, event.type)
                last = time.perf_counter()
        position = max(position, page.next)
    return last, outcome, polls


def batches(prefix: str, group: str, count: int, size: int) -> list[bytes]:
    return [
        _encode(
            {
                "tasks": [
                    {"id": f"{prefix}-{i}", "group": group, "payload": None}
                    for i in range(start, min(count, start + size))
                ]
            }
        )
        for start in range(0, count, size)
    ]


async def submit_batches(http: Http, bodies: list[bytes], submitters: int) -> list[float]:
    """POST every batch with ``submitters`` in flight; the latency of each POST."""
    queue = list(reversed(bodies))
    latencies: list[float] = []

    async def submitter() -> None:
        while queue:
            body = queue.pop()
            started = time.perf_counter()
            status, content = await http.request("POST", "/v1/tasks/batch", body, timeout=60)
            latencies.append(time.perf_counter() - started)
            if status != 202:
                raise RuntimeError(f"batch: HTTP {status} {content[:200]!r}")

    await asyncio.gather(*(submitter() for _ in range(submitters)))
    return latencies


async def measure_e2e(
    cluster: Cluster,
    http: Http,
    figures: Figures,
    args: argparse.Namespace,
    on_start: Callable[[], Awaitable[None]],
    on_end: Callable[[], Awaitable[None]],
) -> None:
    count = args.tasks
    bodies = batches("e2e", GROUP, count, args.batch)
    ids = {f"e2e-{i}" for i in range(count)}
    start = await topic_next(http)
    deadline = time.perf_counter() + args.timeout
    await on_start()
    async with Phase("e2e", cluster, http) as phase:
        started = time.perf_counter()
        follower = asyncio.create_task(follow(http, start, ids, deadline))
        latencies = await submit_batches(http, bodies, args.submitters)
        submitted = time.perf_counter()
        last, outcome, polls = await follower
        wall = last - started
        await on_end()
        figures.put("e2e_tasks", count)
        figures.put("e2e_batch_size", args.batch)
        figures.put("e2e_submitters", args.submitters)
        figures.put("throughput_e2e_tasks_per_s", count / wall)
        figures.put("e2e_seconds", wall)
        figures.put("e2e_submit_tasks_per_s_under_load", count / (submitted - started))
        figures.put("e2e_batch_post_p50_ms", percentile(latencies, 0.5) * 1e3)
        figures.put("e2e_batch_post_p99_ms", percentile(latencies, 0.99) * 1e3)
        figures.put("e2e_follower_polls_per_1000_tasks", polls / count * 1000)
        lost = count - len(outcome)
        not_completed = sum(1 for status in outcome.values() if status != "completed")
        figures.put("e2e_lost", lost)
        figures.put("e2e_not_completed", not_completed)
        await phase.report(figures, count, wall)
    if lost or not_completed:
        raise Lost(f"{lost} tasks lost and {not_completed} not completed of {count}")


async def measure_enqueue_client(
    cluster: Cluster, http: Http, figures: Figures, args: argparse.Namespace
) -> None:
    """``mawex.AsyncClient.submit``, one call per task, ``--in-flight`` calls in flight."""
    count = args.enqueue_tasks
    transport = CountingTransport()
    latencies: list[float] = []
    next_index = 0

    async def caller(client: mawex.AsyncClient) -> None:
        nonlocal next_index
        while next_index < count:
            i = next_index
            next_index += 1
            started = time.perf_counter()
            receipt = await client.submit(ENQUEUE_GROUP, None, id=f"one-{i}")
            latencies.append(time.perf_counter() - started)
            if receipt.duplicate:
                raise RuntimeError(f"submit: one-{i} came back as a duplicate")

    async with mawex.AsyncClient(cluster.url, transport=transport, timeout=60) as client:
        await client.submit(ENQUEUE_GROUP, None, id="one-warm")  # connect before timing
        transport.requests = 0
        async with Phase("enqueue_single", cluster, http) as phase:
            started = time.perf_counter()
            await asyncio.gather(*(caller(client) for _ in range(args.in_flight)))
            wall = time.perf_counter() - started
            figures.put("enqueue_single_in_flight", args.in_flight)
            figures.put("enqueue_single_tasks", count)
            figures.put("enqueue_single_tasks_per_s", count / wall)
            figures.put("enqueue_single_requests", transport.requests)
            figures.put("enqueue_single_tasks_per_request", count / max(1, transport.requests))
            figures.put("enqueue_single_call_p50_ms", percentile(latencies, 0.5) * 1e3)
            figures.put("enqueue_single_call_p99_ms", percentile(latencies, 0.99) * 1e3)
            await phase.report(figures, count, wall)


async def measure_enqueue(
    cluster: Cluster, http: Http, figures: Figures, args: argparse.Namespace
) -> None:
    if args.client == "mawex":
        await measure_enqueue_client(cluster, http, figures, args)
    else:
        await measure_enqueue_single(cluster, http, figures, args)
    bodies = batches("many", ENQUEUE_GROUP, args.tasks, args.batch)
    async with Phase("enqueue_batch", cluster, http) as phase:
        started = time.perf_counter()
        latencies = await submit_batches(http, bodies, args.submitters)
        wall = time.perf_counter() - started
        figures.put("enqueue_batch_tasks_per_s", args.tasks / wall)
        figures.put("enqueue_batch_post_p50_ms", percentile(latencies, 0.5) * 1e3)
        await phase.report(figures, args.tasks, wall)


async def measure_enqueue_single(
    cluster: Cluster, http: Http, figures: Figures, args: argparse.Namespace
) -> None:
    """One ``POST /v1/tasks`` per task, ``--in-flight`` of them in flight."""
    count = args.enqueue_tasks
    latencies: list[float] = []
    next_index = 0

    async def single() -> None:
        nonlocal next_index
        while next_index < count:
            i = next_index
            next_index += 1
            body = _encode({"id": f"one-{i}", "group": ENQUEUE_GROUP, "payload": None})
            started = time.perf_counter()
            status, content = await http.request("POST", "/v1/tasks", body)
            latencies.append(time.perf_counter() - started)
            if status != 202:
                raise RuntimeError(f"submit: HTTP {status} {content[:200]!r}")

    async with Phase("enqueue_single", cluster, http) as phase:
        started = time.perf_counter()
        await asyncio.gather(*(single() for _ in range(args.in_flight)))
        wall = time.perf_counter() - started
        figures.put("enqueue_single_in_flight", args.in_flight)
        figures.put("enqueue_single_tasks_per_s", count / wall)
        figures.put("enqueue_single_post_p50_ms", percentile(latencies, 0.5) * 1e3)
        figures.put("enqueue_single_post_p99_ms", percentile(latencies, 0.99) * 1e3)
        await phase.report(figures, count, wall)


# -- profiling ------------------------------------------------------------------------


class Profiler:
    """py-spy ``record`` of the master and the first worker during the e2e phase."""

    SUFFIX = {"raw": "txt", "flamegraph": "svg", "speedscope": "json"}
    #: gil: only samples holding the GIL (a Python process's scarce CPU); cpu: py-spy's
    #: default (threads it thinks are running); wall: every sample, idle ones too.
    MODES: dict[str, tuple[str, ...]] = {"gil": ("--gil",), "cpu": (), "wall": ("--idle",)}

    def __init__(self, args: argparse.Namespace, cluster: Cluster, procs: Processes) -> None:
        self.dir: Path | None = Path(args.profile) if args.profile else None
        self.format: str = args.profile_format
        self.flags: list[str] = list(self.MODES[args.profile_mode])
        if args.profile_native:
            self.flags.append("--native")
        else:
            self.flags.append("--nonblocking")  # --native needs to pause the process
        self.tag = f"{args.journal}-{args.profile_mode}"
        self.rate: int = args.profile_rate
        self.cluster = cluster
        self.procs = procs
        self.running: list[Proc] = []

    def _py_spy(self) -> str:
        found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if not Path(found).exists():
            raise RuntimeError("py-spy is not installed: .venv/bin/pip install py-spy")
        return found

    async def start(self) -> None:
        if self.dir is None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        exe = self._py_spy()
        targets = [("master", self.cluster.master), ("worker", self.cluster.workers[0])]
        for name, proc in targets:
            out = self.dir / f"{name}-{self.tag}.{self.SUFFIX[self.format]}"
            argv = [exe, "record", "--pid", str(proc.pid), "--rate", str(self.rate), *self.flags]
            argv += ["--format", self.format, "-o", str(out.resolve())]
            self.running.append(self.procs.spawn(f"py-spy-{name}", argv))
        await asyncio.sleep(1.0)  # let py-spy attach before the load starts

    async def stop(self) -> None:
        for proc in self.running:
            if proc.alive():
                os.kill(proc.pid, signal.SIGINT)  # py-spy writes its output on SIGINT
        for proc in self.running:
            await asyncio.to_thread(self.procs.stop, proc, signal.SIGINT, 30.0)
        self.running.clear()


# -- main -------------------------------------------------------------------------------


async def measure_idle(cluster: Cluster, figures: Figures, seconds: float) -> None:
    """CPU of an idle cluster: heartbeats, timer ticks, lease renewals."""
    master, workers = cluster.cpu()
    await asyncio.sleep(seconds)
    master_after, workers_after = cluster.cpu()
    figures.put("idle_cpu_master_utilisation", (master_after - master) / seconds)
    figures.put("idle_cpu_workers_utilisation", (workers_after - workers) / seconds)


async def run(args: argparse.Namespace, cluster: Cluster, figures: Figures) -> None:
    connections = args.submitters + 2 if args.client == "mawex" else args.in_flight
    http = make_http(args.client, cluster.url, max(connections, args.submitters + 2))
    profiler = Profiler(args, cluster, cluster.procs)
    try:
        if "idle" in args.phases:
            await measure_idle(cluster, figures, args.idle_seconds)
        if "latency" in args.phases:
            await measure_latency(cluster, http, figures, args.latency_tasks, args.warmup)
        else:
            for i in range(args.warmup):
                await round_trip(http, f"warm-{i}")
        if "e2e" in args.phases:
            await measure_e2e(cluster, http, figures, args, profiler.start, profiler.stop)
        if "enqueue" in args.phases:
            await measure_enqueue(cluster, http, figures, args)
    finally:
        await profiler.stop()
        await http.aclose()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=20_000, help="e2e tasks (and batch enqueue)")
    parser.add_argument("--workers", type=int, default=4, help="worker processes")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=1,
        help="pods per worker process (mawex worker --concurrency)",
    )
    parser.add_argument("--journal", choices=JOURNALS, default="sqlite")
    parser.add_argument(
        "--client",
        choices=("httpx", "raw", "mawex"),
        default="httpx",
        help="HTTP client of the benchmark; mawex: httpx, and the single-task enqueue rate "
        "is that of mawex.AsyncClient.submit",
    )
    parser.add_argument("--batch", type=int, default=500, help="tasks per POST /v1/tasks/batch")
    parser.add_argument("--submitters", type=int, default=4, help="concurrent batch submitters")
    parser.add_argument("--latency-tasks", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument(
        "--enqueue-tasks", type=int, help="single-task enqueue (5000; 50000 with --client mawex)"
    )
    parser.add_argument(
        "--in-flight", type=int, help="single submits in flight (64; 1000 with --client mawex)"
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="e2e deadline, seconds")
    parser.add_argument(
        "--phases",
        default="latency,e2e,enqueue",
        help="comma-separated: idle (opt-in), latency, e2e, enqueue",
    )
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument(
        "--log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="master and worker log level (info is mawex's default)",
    )
    parser.add_argument(
        "--whatif",
        default=os.environ.get("MAWEX_BENCH_WHATIF", ""),
        help="experimental patches for master and workers, see bench/whatif.py",
    )
    parser.add_argument("--pg-url", default=os.environ.get("MAWEX_BENCH_POSTGRESQL", DEFAULT_PG))
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--profile", help="record py-spy profiles of the e2e phase into DIR")
    parser.add_argument(
        "--profile-format", choices=("raw", "flamegraph", "speedscope"), default="raw"
    )
    parser.add_argument("--profile-mode", choices=("gil", "cpu", "wall"), default="gil")
    parser.add_argument("--profile-rate", type=int, default=250, help="py-spy samples/s")
    parser.add_argument("--profile-native", action="store_true", help="py-spy --native")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    parser.add_argument("--serve-memory-master", metavar="HOST:PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.phases = {p.strip() for p in args.phases.split(",") if p.strip()}
    pipelined = args.client == "mawex"
    if args.enqueue_tasks is None:
        args.enqueue_tasks = 50_000 if pipelined else 5000
    if args.in_flight is None:
        args.in_flight = 1000 if pipelined else 64
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_memory_master:
        serve_memory_master(args.serve_memory_master)
        return 0
    # SIGTERM unwinds like Ctrl-C, so the finally blocks stop every child.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    figures = Figures()
    workdir = Path(tempfile.mkdtemp(prefix="mawex-bench-"))
    procs = Processes(workdir)
    journal = JournalSetup(args.journal, workdir, args.pg_url)
    code = 0
    try:
        figures.put("journal", args.journal)
        figures.put("workers", args.workers)
        figures.put("pods", args.workers * args.concurrency)
        figures.put("client", args.client)
        figures.put("log_level", args.log_level)
        figures.put("whatif", args.whatif or "none")
        figures.put("cpus", os.cpu_count())
        figures.put("load_avg_1m_before", os.getloadavg()[0])
        figures.put("python", platform.python_version(), show=False)
        figures.put("git", git_describe())
        journal.create()
        cluster = start_cluster(args, procs, journal)
        asyncio.run(run(args, cluster, figures))
        figures.put("load_avg_1m_after", os.getloadavg()[0])
    except Lost as exc:
        print(f"LOST: {exc}", file=sys.stderr)
        code = 1
    except Exception as exc:
        print(f"FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        for proc in procs.procs:
            if not proc.name.startswith("py-spy"):
                tail = proc.tail(15)
                print(f"--- {proc.name} (pid {proc.pid}) log tail:\n{tail}", file=sys.stderr)
        code = 2
    finally:
        procs.stop_all()
        journal.drop()
        if args.keep:
            print(f"workdir {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    figures.put("exit_code", code, show=False)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(figures.values, indent=2) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
