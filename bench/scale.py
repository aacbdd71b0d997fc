"""Scale figures of real mawex processes: 1M pending tasks, 1,000 workers, takeover, fan-out.

Phases (``--phases``, all by default), each against real ``mawex master``
processes and worker processes (SQLite journal in a temporary directory unless
``--journal postgresql``):

1. **pending**: ``--tasks`` tasks (1,000,000) in ``--groups`` groups (100) that no
   worker serves, submitted with ``POST /v1/tasks/batch`` (``--batch`` tasks a
   request, ``--in-flight`` requests at once, bodies encoded beforehand):
   submit rate, batch latency (its max shows snapshot stalls), master RSS before
   and after (``VmRSS``; ``VmHWM`` is the peak) and bytes per pending task.
2. **dispatch**: then ``--workers`` workers (1,000; worker ``i`` serves group
   ``i % groups`` in pod ``i % pods``) arrive at once from ``--worker-procs``
   processes, each running its share as :class:`mawex.worker.Worker` objects on
   one event loop (no-op executor ``mawex.examples.demo:echo``, local sandbox):
   time until the master sees them all checked in, and the completion rate while
   they drain ``--drain-tasks`` of the backlog (20,000: draining a million with
   a no-op executor would take half an hour and measure nothing new).
3. **takeover**: a journal holding ``--tasks`` accepted tasks, written straight
   through the journal API (the same events the pending phase produces): the
   in-process replay without a snapshot, then a master *process* started on it
   (spawn → serving ``/v1/state`` as leader), the snapshot (its size and the
   time to write it), the same restart from the snapshot, and a standby's
   takeover when the leader stops (SIGTERM hands the lease over). A master on an
   empty journal gives the fixed cost of starting the process. If the pending
   phase ran, a restart on its journal too (a snapshot written by the live master
   plus the journal after it).
4. **fanout**: ``--subscribers`` (100, 1,000, 10,000) result-topic subscribers in
   ``--subscriber-procs`` processes, over ``WS /v1/results/stream`` and/or long
   polls of ``GET /v1/results`` (``--fanout-modes``), receive a burst of
   ``--fanout-events`` events (tasks that expire together): deliveries
   (events x subscribers) per second, the time for the last subscriber to see the
   last event, the master's memory per subscriber, and where it breaks. The
   open-file limit is raised to the hard limit here and in every child, and the
   master's ``--max-connections`` to fit.

Prints one ``name value`` line per figure (``--json FILE`` writes them too);
``--quick`` runs every phase at tiny sizes. Every process started is stopped by
its PID, also on failure.

Run: ``.venv/bin/python bench/scale.py [--phases pending,dispatch,takeover,fanout]
[--tasks 1000000] [--workers 1000] [--groups 100] [--quick] [--json out.json]``
(``make bench-scale SCALE_ARGS=...``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec
from _common import PROBE, git_describe, http_request, read_http_response
from failover import DEFAULT_PG, Figures, Store, cold_rebuild, size_label

from mawex.cluster import LocalCluster, Proc
from mawex.core import events as ev
from mawex.journal import open_journal
from mawex.journal.base import Record, Snapshot
from mawex.master.engine import Engine

EXECUTOR = "mawex.examples.demo:echo"
PHASES = ("pending", "dispatch", "takeover", "fanout")
FANOUT_GROUP = "fanout"
HERE = Path(__file__).resolve()


# -- small helpers --------------------------------------------------------------------


def raise_nofile() -> int:
    """Raise the soft open-file limit to the hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def proc_status(pid: int) -> dict[str, int]:
    """``VmRSS``/``VmHWM`` (bytes) of a process from ``/proc/PID/status``; empty if gone."""
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                out[name] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def mib(n: float) -> float:
    return round(n / (1 << 20), 1)


def get_state(url: str, timeout: float = 30.0) -> dict[str, Any] | None:
    try:
        response = PROBE.get(f"{url}/v1/state", timeout=timeout)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    body: dict[str, Any] = response.json()
    return body


def wait_for(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.02) -> float:
    """Poll ``check`` until true; returns the time.monotonic() it became true."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:g}s")
        time.sleep(interval)


def metric(url: str, name: str) -> float | None:
    """One unlabelled sample of the master's ``/metrics``."""
    try:
        text = PROBE.get(f"{url}/metrics", timeout=30).text
    except httpx.HTTPError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


class Http:
    """One keep-alive HTTP/1.1 connection on asyncio streams (Content-Length bodies only).

    Far cheaper per request than httpx, so the benchmark steals little CPU from
    the master on a small machine. A request on a connection the server closed
    is sent once more on a new one (every request made here is idempotent).
    """

    def __init__(self, url: str) -> None:
        host_port = url.split("://", 1)[1].rstrip("/")
        host, _, port = host_port.rpartition(":")
        self.host, self.port = host, int(port)
        self._host_header = host_port.encode()
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def connect(self) -> None:
        if self._streams is None:
            self._streams = await asyncio.open_connection(self.host, self.port)

    async def request(
        self, method: str, path: str, body: bytes | None = None, timeout: float = 120.0
    ) -> tuple[int, bytes]:
        try:
            await self.send(method, path, body)
            return await self.response(timeout)
        except (asyncio.IncompleteReadError, ConnectionError):
            self.close()
            await self.send(method, path, body)
            return await self.response(timeout)

    async def send(self, method: str, path: str, body: bytes | None = None) -> None:
        """Write a request (connecting first if needed); :meth:`response` reads its answer."""
        await self.connect()
        assert self._streams is not None
        self._streams[1].write(http_request(method, path, self._host_header, body))

    async def response(self, timeout: float) -> tuple[int, bytes]:
        assert self._streams is not None, "send() first"
        reader = self._streams[0]
        try:
            async with asyncio.timeout(timeout):
                status, content, closing = await read_http_response(reader)
        except BaseException:
            self.close()
            raise
        if closing:
            self.close()
        return status, content

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None


# -- the cluster ----------------------------------------------------------------------


class Bench:
    """The benchmark's processes and figures."""

    def __init__(self, args: argparse.Namespace, workdir: Path, figures: Figures) -> None:
        self.args = args
        self.workdir = workdir
        self.figures = figures
        self.put = figures.put
        self.clusters: list[LocalCluster] = []
        self.children: list[subprocess.Popen[bytes]] = []
        self.stores: list[Store] = []

    # -- processes --------------------------------------------------------------------

    def store(self, label: str) -> Store:
        store = asyncio.run(
            Store.create(self.args.journal, self.workdir, self.args.postgresql, label)
        )
        self.stores.append(store)
        return store

    def cluster(self, name: str, store: Store) -> LocalCluster:
        cluster = LocalCluster(self.workdir / name, journal=store.url)
        self.clusters.append(cluster)
        return cluster

    def master_args(self, max_connections: int = 4096) -> tuple[str, ...]:
        return (
            "--lease-ttl",
            str(self.args.lease_ttl),
            "--log-level",
            self.args.log_level,
            "--max-connections",
            str(max_connections),
            "--max-batch",
            str(max(self.args.batch, 10_000)),
        )

    def spawn_child(
        self, name: str, argv: list[str], *, reports: bool = False
    ) -> subprocess.Popen[bytes]:
        """Start this script in a child role, its output in ``name.log``.

        ``reports``: the child prints JSON lines on its stdout for :meth:`_read_json`.
        """
        with open(self.workdir / f"{name}.log", "ab") as log:
            popen = subprocess.Popen(
                [sys.executable, str(HERE), *argv],
                stdout=subprocess.PIPE if reports else log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                cwd=self.workdir,
            )
        self.children.append(popen)
        return popen

    def stop_child(self, popen: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
        if popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(popen.pid, signal.SIGTERM)
        try:
            popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(popen.pid, signal.SIGKILL)
            popen.wait(timeout=10)
        if popen.stdout is not None:
            popen.stdout.close()
        if popen in self.children:
            self.children.remove(popen)

    def stop_all(self) -> None:
        for popen in list(self.children):
            self.stop_child(popen)
        for cluster in self.clusters:
            cluster.stop_all(timeout=30)
        for store in self.stores:
            with contextlib.suppress(Exception):
                asyncio.run(store.drop())

    def start_leader(self, cluster: LocalCluster, name: str, *extra: str) -> tuple[Proc, float]:
        """Start a master and wait until it serves ``/v1/state`` as leader: (proc, seconds)."""
        started = time.monotonic()
        proc = cluster.start_master(name, *extra, wait=False)

        def leading() -> bool:
            if not proc.alive:
                raise RuntimeError(f"{name} exited:\n{proc.log()[-3000:]}")
            state = get_state(proc.url or "", timeout=5)
            return bool(state and state["leader"])

        return proc, wait_for(leading, 600, f"{name} leading") - started

    # -- 1. pending ---------------------------------------------------------------------

    def bodies(self, first: int, count: int, group_of: Callable[[int], str]) -> list[bytes]:
        batch = self.args.batch
        out = []
        for start in range(first, first + count, batch):
            tasks = [
                {"id": f"t{i:07d}", "group": group_of(i), "payload": {"n": i}}
                for i in range(start, min(first + count, start + batch))
            ]
            out.append(msgspec.json.encode({"tasks": tasks}))
        return out

    def submit(self, url: str, bodies: list[bytes]) -> list[float]:
        """POST every body to ``/v1/tasks/batch``, ``--in-flight`` at a time; batch latencies."""
        latencies: list[float] = []

        async def submitter(queue: list[bytes]) -> None:
            http = Http(url)
            try:
                while queue:
                    body = queue.pop()
                    started = time.perf_counter()
                    status, content = await http.request("POST", "/v1/tasks/batch", body)
                    if status != 202:
                        raise RuntimeError(f"batch submit: {status} {content[:300]!r}")
                    latencies.append(time.perf_counter() - started)
            finally:
                http.close()

        async def run() -> None:
            queue = list(reversed(bodies))
            await asyncio.gather(*(submitter(queue) for _ in range(self.args.in_flight)))

        asyncio.run(run())
        return latencies

    def group_name(self, i: int) -> str:
        return f"g{i % self.args.groups:03d}"

    def phase_pending(self) -> tuple[LocalCluster, Proc]:
        a = self.args
        store = self.store("pending")
        cluster = self.cluster("pending", store)
        master, _ = self.start_leader(cluster, "master-a", *self.master_args())
        url = master.url or ""
        encode_started = time.perf_counter()
        bodies = self.bodies(0, a.tasks, self.group_name)
        self.put(
            "pending_encode_s",
            round(time.perf_counter() - encode_started, 1),
            f"{len(bodies)} request bodies of {a.batch} tasks, {mib(sum(map(len, bodies)))} MiB, "
            "encoded before the clock starts",
        )
        time.sleep(1.0)
        before = proc_status(master.pid)
        cpu_before = cpu_seconds(master.pid)
        snapshots_before = metric(url, "mawex_snapshots_total") or 0
        started = time.perf_counter()
        latencies = self.submit(url, bodies)
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(master.pid) - cpu_before
        del bodies
        state = get_state(url) or {}
        pending = state.get("counts", {}).get("pending")
        time.sleep(1.0)
        after = proc_status(master.pid)
        snapshots = (metric(url, "mawex_snapshots_total") or 0) - snapshots_before
        self.put(
            "pending_tasks",
            pending,
            f"pending on the master after the submissions ({a.groups} groups)",
        )
        self.put(
            "pending_submit_tasks_per_s",
            round(a.tasks / elapsed),
            f"{a.tasks} tasks in {elapsed:.1f}s",
        )
        self.put("pending_batch_latency_p50_ms", round(statistics.median(latencies) * 1000, 1))
        self.put(
            "pending_batch_latency_max_ms",
            round(max(latencies) * 1000, 1),
            f"{a.batch} tasks a batch, {a.in_flight} in flight; the max includes snapshot stalls",
        )
        self.put("pending_snapshots", int(snapshots), "snapshots the master saved meanwhile")
        self.put("pending_master_cpu_us_per_task", round(cpu / a.tasks * 1e6, 1))
        self.put("pending_master_rss_before_mib", mib(before.get("VmRSS", 0)))
        self.put("pending_master_rss_after_mib", mib(after.get("VmRSS", 0)))
        self.put("pending_master_hwm_mib", mib(after.get("VmHWM", 0)), "peak RSS (VmHWM)")
        per_task = (after.get("VmRSS", 0) - before.get("VmRSS", 0)) / a.tasks
        self.put(
            "pending_master_bytes_per_task",
            round(per_task),
            f"RSS growth / tasks; target: 1M pending in <= 1 GiB "
            f"({'met' if after.get('VmRSS', 0) <= 1 << 30 else 'MISSED'} at this size)",
        )
        return cluster, master

    # -- 2. dispatch ---------------------------------------------------------------------

    def start_worker_hosts(self, url: str) -> list[subprocess.Popen[bytes]]:
        a = self.args
        per = -(-a.workers // a.worker_procs)
        hosts = []
        for k, first in enumerate(range(0, a.workers, per)):
            argv = [
                "--role",
                "workers",
                "--master",
                url,
                "--first",
                str(first),
                "--count",
                str(min(per, a.workers - first)),
                "--groups",
                str(a.groups),
                "--pods",
                str(a.pods or a.workers),
                "--log-level",
                a.log_level,
            ]
            hosts.append(self.spawn_child(f"workers-{k}", argv))
        return hosts

    def phase_dispatch(self, cluster: LocalCluster | None, master: Proc | None) -> None:
        a = self.args
        if cluster is None or master is None:
            # no pending phase: a backlog of its own, twice what the workers drain
            store = self.store("dispatch")
            cluster = self.cluster("dispatch", store)
            master, _ = self.start_leader(cluster, "master-a", *self.master_args())
            self.submit(master.url or "", self.bodies(0, 2 * a.drain_tasks, self.group_name))
        url = master.url or ""
        samples: list[tuple[float, int, int]] = []  # (monotonic, connected, completed)

        def sample() -> tuple[float, int, int]:
            state = get_state(url) or {"workers": [], "counts": {"completed": 0}}
            connected = sum(1 for w in state["workers"] if w["status"] != "disconnected")
            point = (time.monotonic(), connected, int(state["counts"]["completed"]))
            samples.append(point)
            return point

        _, _, completed0 = sample()
        started = time.monotonic()
        cpu_before = cpu_seconds(master.pid)
        hosts = self.start_worker_hosts(url)
        try:
            deadline = started + max(120.0, a.workers * 0.2)
            while True:
                now, connected, _ = sample()
                if connected >= a.workers:
                    break
                if now > deadline or any(h.poll() is not None for h in hosts):
                    raise RuntimeError(f"only {connected} of {a.workers} workers checked in")
                time.sleep(0.2)
            all_in, _, done_at_all = samples[-1]
            first_in = next(t for t, c, _ in samples if c > 0)
            self.put(
                "dispatch_checkin_first_s",
                round(first_in - started, 2),
                "worker processes spawned -> the master sees a worker (includes Python start-up)",
            )
            self.put(
                "dispatch_checkin_all_s",
                round(all_in - started, 2),
                f"-> all {a.workers} workers checked in ({a.worker_procs} processes, "
                f"{a.pods or a.workers} pods, {a.groups} groups)",
            )
            self.put(
                "dispatch_completed_during_checkin",
                done_at_all - completed0,
                "tasks completed while the others were still checking in",
            )
            target = done_at_all + a.drain_tasks
            deadline = time.monotonic() + max(120.0, a.drain_tasks / 20)
            cpu_window = cpu_seconds(master.pid)
            while True:
                time.sleep(0.5)
                now, connected, done = sample()
                if done >= target or now > deadline:
                    break
            window = now - all_in
            cpu = cpu_seconds(master.pid) - cpu_window
            drained = done - done_at_all
            self.put(
                "dispatch_tasks_per_s",
                round(drained / window),
                f"{drained} tasks completed in {window:.1f}s with all {a.workers} workers in "
                f"(completions seen on /v1/state every 0.5s; window capped at "
                f"{a.drain_tasks} tasks)",
            )
            self.put("dispatch_master_cpu_us_per_task", round(cpu / max(1, drained) * 1e6))
            self.put(
                "dispatch_master_cpu_utilisation",
                round(cpu / window, 2),
                "of one core, during the window",
            )
            self.put("dispatch_master_rss_mib", mib(proc_status(master.pid).get("VmRSS", 0)))
            host_rss = sum(proc_status(h.pid).get("VmRSS", 0) for h in hosts)
            self.put(
                "dispatch_worker_kib_per_worker",
                round(host_rss / a.workers / 1024),
                f"RSS of the {len(hosts)} worker processes / workers",
            )
            self.put("dispatch_master_cpu_s_total", round(cpu_seconds(master.pid) - cpu_before, 1))
        finally:
            stop_started = time.monotonic()
            for host in hosts:
                self.stop_child(host, timeout=60)
            self.put("dispatch_workers_stop_s", round(time.monotonic() - stop_started, 1))

    # -- 3. takeover ---------------------------------------------------------------------

    async def fill_accepted(self, url: str, count: int) -> float:
        """Append ``count`` ``accepted`` events (as the pending phase makes) under a lease."""
        journal = open_journal(url)
        await journal.open()
        started = time.perf_counter()
        try:
            lease = await journal.acquire("bench-fill", 3600, None)
            assert lease is not None, "the journal's lease is taken"
            at = time.time()
            offset = 0
            for start in range(0, count, 10_000):
                records = []
                for i in range(start, min(count, start + 10_000)):
                    offset += 1
                    event = ev.Accepted(
                        group=self.group_name(i),
                        id=f"t{i:07d}",
                        payload=msgspec.Raw(b'{"n":%d}' % i),
                        at=at + i * 1e-5,
                    )
                    records.append(Record(offset, None, event.at, ev.encode(event)))
                await journal.append(records, lease.epoch)
            await journal.release(lease)
        finally:
            await journal.close()
        return time.perf_counter() - started

    @staticmethod
    async def save_snapshot(engine: Engine) -> tuple[int, float, float, float, int]:
        """A leader's ``save_snapshot`` timed by step: (bytes, build, store, trim, trimmed)."""
        journal = engine.journal
        lease = await journal.acquire("bench-snapshot", 600, None)
        assert lease is not None, "the journal's lease is taken"
        state = engine.state
        try:
            started = time.perf_counter()
            body = state.snapshot()
            built = time.perf_counter()
            await journal.save_snapshot(Snapshot(state.offset, body), lease.epoch)
            stored = time.perf_counter()
            keep_topic = max(1, state.topic_next - 1_000_000)
            trimmed = await journal.trim(state.offset, keep_topic, lease.epoch)
            done = time.perf_counter()
        finally:
            await journal.release(lease)
        return len(body), built - started, stored - built, done - stored, trimmed

    def phase_takeover(self, live: LocalCluster | None, live_master: Proc | None) -> None:
        a = self.args
        n = a.tasks
        label = size_label(n)
        empty = self.cluster("takeover-empty", self.store("empty"))
        _, seconds = self.start_leader(empty, "master-empty", *self.master_args())
        self.put(
            "takeover_restart_empty_s",
            round(seconds, 2),
            "spawn -> /v1/state as leader on an empty journal: the fixed cost of a master process",
        )
        empty.stop_all()

        store = self.store("takeover")
        fill_s = asyncio.run(self.fill_accepted(store.fill_url(), n))
        self.put("takeover_fill_s", round(fill_s, 1), f"{n} accepted events written, no snapshot")
        replay_s, engine = asyncio.run(cold_rebuild(store.url))
        asyncio.run(engine.journal.close())
        tasks = len(engine.state.tasks)
        del engine
        self.put(
            "takeover_replay_s",
            round(replay_s, 2),
            f"in-process rebuild without a snapshot: {n} events -> {tasks} tasks "
            f"({round(n / replay_s)} events/s)",
        )
        cluster = self.cluster("takeover", store)
        # a huge --snapshot-every: the restarted master must not snapshot on its own
        no_snap = (*self.master_args(), "--snapshot-every", str(10 * n + 100))
        master, seconds = self.start_leader(cluster, "master-a", *no_snap)
        self.put(
            f"takeover_restart_no_snapshot_{label}_s",
            round(seconds, 2),
            "spawn -> /v1/state as leader, replaying the whole journal",
        )
        self.put(
            "takeover_master_rss_after_replay_mib", mib(proc_status(master.pid).get("VmRSS", 0))
        )
        cluster.kill("master-a", signal.SIGTERM)  # hands the lease over

        # the snapshot, as a leader saves it (build, store, trim), timed in-process
        _, engine = asyncio.run(cold_rebuild(store.url))
        size, build_s, store_s, trim_s, trimmed = asyncio.run(self.save_snapshot(engine))
        asyncio.run(engine.journal.close())
        del engine
        self.put("takeover_snapshot_mib", mib(size), f"{size / n:.0f} bytes per task")
        self.put(
            "takeover_snapshot_build_s",
            round(build_s, 3),
            "MasterState.snapshot(): the engine loop is blocked this long",
        )
        self.put(
            "takeover_snapshot_store_s",
            round(store_s, 2),
            "journal.save_snapshot (one row, fsync'd); the engine's turn waits for it",
        )
        self.put(
            "takeover_snapshot_trim_s",
            round(trim_s, 2),
            f"journal.trim of {trimmed} records below the snapshot (the engine's own "
            "snapshots trim in the background, 20,000 records a transaction)",
        )
        started = time.perf_counter()
        _, engine = asyncio.run(cold_rebuild(store.url))
        asyncio.run(engine.journal.close())
        del engine
        self.put(
            "takeover_load_snapshot_s",
            round(time.perf_counter() - started, 2),
            "in-process rebuild from the snapshot",
        )
        master, seconds = self.start_leader(cluster, "master-a", *self.master_args())
        self.put(
            f"takeover_restart_snapshot_{label}_s",
            round(seconds, 2),
            f"spawn -> /v1/state as leader from the snapshot; target <= 2 s: "
            f"{'met' if seconds <= 2 else 'MISSED'}",
        )
        standby_started = time.monotonic()
        standby = cluster.start_master("master-b", *self.master_args(), wait=False)
        cluster.wait_healthy(standby, timeout=600)
        self.put(
            "takeover_standby_ready_s",
            round(time.monotonic() - standby_started, 2),
            "a standby: spawn -> healthy (its state loaded)",
        )
        handover = time.monotonic()
        cluster.kill("master-a", signal.SIGTERM)
        done = wait_for(
            lambda: bool((get_state(standby.url or "", 5) or {}).get("leader")), 600, "standby"
        )
        self.put(
            "takeover_standby_handover_s",
            round(done - handover, 2),
            "leader SIGTERM (lease handed over) -> the standby serves as leader "
            "(kill -9: bench/failover.py)",
        )
        cluster.stop_all()

        if live is not None and live_master is not None:
            live.kill(live_master.name, signal.SIGTERM)
            _, seconds = self.start_leader(live, "master-b", *self.master_args())
            self.put(
                "takeover_restart_live_s",
                round(seconds, 2),
                "restart on the pending/dispatch phases' journal: the live master's last "
                "snapshot plus the events after it",
            )
            live.stop_all()

    # -- 4. fanout -----------------------------------------------------------------------

    def phase_fanout(self) -> None:
        a = self.args
        store = self.store("fanout")
        cluster = self.cluster("fanout", store)
        fd_limit = raise_nofile()
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        most = (hard if hard != resource.RLIM_INFINITY else fd_limit) - 1024
        ladder = [most if s == "max" else int(s) for s in a.subscribers.split(",")]
        self.put(
            "fanout_fd_limit",
            fd_limit,
            f"RLIMIT_NOFILE here, in the children and the master; 'max' subscribers: {most}",
        )
        serial = 0
        broke: dict[str, str] = {}
        for mode in a.fanout_modes.split(","):
            for n in ladder:
                if mode in broke:
                    break
                serial += 1
                # A master per round, on a port of its own: after thousands of client
                # connections the last round's port may be some client socket's now.
                extra = self.master_args(max_connections=n + 1024)
                name = f"master-fanout-{serial}"
                master, _ = self.start_leader(cluster, name, *extra)
                try:
                    outcome = self.fanout_round(master.url or "", master, mode, n, serial)
                except Exception as exc:
                    outcome = f"{type(exc).__name__}: {exc}"[:300]
                finally:
                    cluster.kill(name, signal.SIGTERM)
                if outcome:
                    broke[mode] = f"{n}: {outcome}"
        for mode in a.fanout_modes.split(","):
            self.put(f"fanout_{mode}_limit", broke.get(mode, f"held {max(ladder)}"))
        cluster.stop_all()

    def fanout_round(self, url: str, master: Proc, mode: str, n: int, serial: int) -> str | None:
        """One burst to ``n`` subscribers; returns why it broke, or None."""
        a = self.args
        m = a.fanout_events
        name = f"fanout_{mode}_{n}"
        state = get_state(url) or {}
        start = int(state["topic_next"])
        rss_before = proc_status(master.pid).get("VmRSS", 0)
        procs = min(a.subscriber_procs, n)
        per = -(-n // procs)
        children = []
        for k in range(procs):
            count = min(per, n - k * per)
            argv = ["--role", "subscribers", "--master", url, "--mode", mode]
            argv += ["--count", str(count), "--from", str(start), "--events", str(m)]
            argv += ["--timeout", str(a.fanout_timeout)]
            children.append(self.spawn_child(f"subscribers-{serial}-{k}", argv, reports=True))
        try:
            ready = [self._read_json(c, a.fanout_timeout) for c in children]
            connected = sum(r.get("connected", 0) for r in ready)
            errors = [r["error"] for r in ready if r.get("error")]
            self.put(
                f"{name}_connected", connected, f"of {n}" + (f"; {errors[0]}" if errors else "")
            )
            connect_s = max(r.get("connect_s", 0.0) for r in ready)
            self.put(f"{name}_connect_s", round(connect_s, 2))
            time.sleep(1.0)
            rss_connected = proc_status(master.pid).get("VmRSS", 0)
            self.put(
                f"{name}_master_kib_per_subscriber",
                round((rss_connected - rss_before) / max(1, connected) / 1024, 1),
            )
            # a burst: m tasks that expire together on the next tick, m events in a turn or two
            tasks = [
                {
                    "id": f"f{serial}-{i}",
                    "group": FANOUT_GROUP,
                    "payload": None,
                    "pending_timeout_s": 0.001,
                }
                for i in range(m)
            ]
            cpu_before = cpu_seconds(master.pid)
            burst = time.monotonic()
            response = PROBE.post(f"{url}/v1/tasks/batch", json={"tasks": tasks}, timeout=60)
            response.raise_for_status()
            results = [self._read_json(c, a.fanout_timeout + 30) for c in children]
            cpu = cpu_seconds(master.pid) - cpu_before
            self.put(
                f"{name}_master_cpu_utilisation",
                round(cpu / max(1e-3, time.monotonic() - burst), 2),
                "of one core, burst submitted -> every subscriber done",
            )
        finally:
            for child in children:
                self.stop_child(child)
        time.sleep(1.0)
        self.put(
            f"{name}_streams_left",
            int(metric(url, "mawex_topic_waiters") or 0),
            "topic waiters on the master 1s after every subscriber process exited",
        )
        events = PROBE.get(
            f"{url}/v1/results", params={"from": start, "limit": m}, timeout=30
        ).json()["events"]
        first_at, last_at = float(events[0]["at"]), float(events[-1]["at"])
        complete = sum(r.get("complete", 0) for r in results)
        last_seen = max((r["last_seen"] for r in results if r.get("last_seen")), default=0.0)
        self.put(f"{name}_complete", complete, f"subscribers that saw all {m} events")
        if last_seen:
            span = max(1e-3, last_seen - first_at)
            self.put(
                f"{name}_deliveries_per_s",
                round(complete * m / span),
                f"{complete} x {m} events from the first event's time to the last subscriber's "
                f"last event ({span:.2f}s)",
            )
            self.put(
                f"{name}_last_lag_s",
                round(last_seen - last_at, 3),
                "last event's time -> the last subscriber receives it",
            )
            medians = [r["median_lag"] for r in results if r.get("median_lag") is not None]
            if medians:
                self.put(f"{name}_median_lag_s", round(statistics.median(medians) - last_at, 3))
        if connected < n:
            return f"{connected} of {n} connected ({errors[0] if errors else 'no error given'})"
        if complete < n:
            return f"{complete} of {n} saw every event within {a.fanout_timeout:g}s"
        return None

    @staticmethod
    def _read_json(child: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
        """The next JSON line a child prints (its stdout), or an error after ``timeout``."""
        assert child.stdout is not None
        fd = child.stdout.fileno()
        import select

        deadline = time.monotonic() + timeout
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                return {"error": f"no report within {timeout:g}s"}
            readable, _, _ = select.select([fd], [], [], left)
            if not readable:
                continue
            chunk = os.read(fd, 1)
            if not chunk:
                return {"error": f"exited ({child.poll()}) without a report"}
            line += chunk
        result: dict[str, Any] = json.loads(line)
        return result


# -- child roles -------------------------------------------------------------------------


def role_workers(args: argparse.Namespace) -> None:
    """Run ``--count`` workers (from index ``--first``) on one loop until SIGTERM."""
    from mawex.cli.options import run_async
    from mawex.logs import setup_logging
    from mawex.sandbox import create_sandbox
    from mawex.worker import Worker, WorkerPool

    raise_nofile()
    setup_logging(args.log_level, "json")

    async def main() -> None:
        workers = [
            Worker(
                masters=args.master,
                group=f"g{i % args.groups:03d}",
                pod=f"p{i % args.pods:04d}",
                worker_id=f"w{i:05d}",
                sandbox=create_sandbox("local", EXECUTOR),
                connect_timeout=60,
                drain_timeout=5,
            )
            for i in range(args.first, args.first + args.count)
        ]
        pool = WorkerPool(workers)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, pool.stop)
        await pool.run()

    run_async(main())


class Subscribers:
    """``--count`` subscribers from topic offset ``--from`` until each saw ``--events`` events.

    Prints a JSON line once connected (``connected``, ``connect_s``, ``error``), then
    one with ``complete``, ``last_seen`` (the latest time a subscriber saw its last
    event) and ``median_lag`` (the median of those times).
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.finished: list[float] = []
        self.errors: list[str] = []
        self.outcomes = 0  # subscribers connected or failed
        self.connected = 0
        self.ready = asyncio.Event()
        # Handshakes in flight at once: thousands opened together would leave some
        # connections waiting longer than the master's --header-timeout for their
        # request while this process works through the others.
        self.gate = asyncio.Semaphore(args.handshakes)

    @staticmethod
    def report(body: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(body) + "\n")
        sys.stdout.flush()

    def _outcome(self, ok: bool, error: BaseException | None = None) -> None:
        self.outcomes += 1
        self.connected += ok
        if error is not None:
            self.errors.append(f"{type(error).__name__}: {error}"[:200])
        if self.outcomes == self.args.count:
            self.ready.set()

    async def ws_one(self) -> None:
        from websockets.asyncio.client import ClientConnection, connect

        a = self.args
        uri = a.master.replace("http://", "ws://") + f"/v1/results/stream?from={a.start}"
        ws: ClientConnection | None = None
        try:
            async with self.gate:
                ws = await connect(uri, compression=None, open_timeout=a.timeout, max_queue=None)
            self._outcome(True)
            seen = 0
            async for _ in ws:
                seen += 1
                if seen >= a.events:
                    self.finished.append(time.time())
                    return
        except Exception as exc:  # report it, let the others go on
            if ws is not None:
                self.errors.append(f"{type(exc).__name__}: {exc}"[:200])
            else:
                self._outcome(False, exc)
        finally:
            if ws is not None:
                await ws.close()

    async def poll_one(self) -> None:
        a = self.args
        http = Http(a.master)
        offset, seen, subscribed = a.start, 0, False
        path = "/v1/results?from={}&limit=10000&wait=30"
        try:
            async with self.gate:
                await http.send("GET", path.format(offset))
            subscribed = True
            self._outcome(True)
            while True:
                status, body = await http.response(timeout=60)
                if status != 200:
                    raise RuntimeError(f"GET /v1/results: {status} {body[:200]!r}")
                page = msgspec.json.decode(body)
                seen += len(page["events"])
                offset = page["next"]
                if seen >= a.events:
                    break
                await http.send("GET", path.format(offset))
            self.finished.append(time.time())
        except Exception as exc:
            if subscribed:
                self.errors.append(f"{type(exc).__name__}: {exc}"[:200])
            else:
                self._outcome(False, exc)
        finally:
            http.close()

    async def run(self) -> None:
        a = self.args
        one = self.ws_one if a.mode == "ws" else self.poll_one
        started = time.monotonic()
        tasks = []
        for _ in range(a.count):
            tasks.append(asyncio.create_task(one()))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(a.timeout):
                await self.ready.wait()
        error = self.errors[0] if self.errors else None
        self.report(
            {"connected": self.connected, "connect_s": time.monotonic() - started, "error": error}
        )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(a.timeout):
                await asyncio.gather(*tasks, return_exceptions=True)
        for task in tasks:
            task.cancel()
        finished = self.finished
        self.report(
            {
                "complete": len(finished),
                "last_seen": max(finished) if finished else None,
                "median_lag": statistics.median(finished) if finished else None,
                "error": self.errors[0] if self.errors else None,
            }
        )


def role_subscribers(args: argparse.Namespace) -> None:
    from mawex.cli.options import run_async

    raise_nofile()
    run_async(Subscribers(args).run())


# -- main ----------------------------------------------------------------------------------


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument(
        "--phases", default=",".join(PHASES), help="comma-separated: " + ",".join(PHASES)
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes, to try the script out")
    p.add_argument("--journal", choices=("sqlite", "postgresql"), default="sqlite")
    p.add_argument("--postgresql", default=DEFAULT_PG, help="superuser URL (--journal postgresql)")
    p.add_argument("--tasks", type=int, default=1_000_000, help="pending tasks (and takeover size)")
    p.add_argument("--groups", type=int, default=100)
    p.add_argument("--batch", type=int, default=5000, help="tasks per POST /v1/tasks/batch")
    p.add_argument("--in-flight", type=int, default=4, help="batch requests at once")
    p.add_argument("--workers", type=int, default=1000)
    p.add_argument("--pods", type=int, default=0, help="pods the workers are in (0: one each)")
    p.add_argument("--worker-procs", type=int, default=4, help="processes the workers run in")
    p.add_argument("--drain-tasks", type=int, default=20_000, help="completions to time")
    p.add_argument(
        "--subscribers",
        default="100,1000,10000,max",
        help="the fan-out ladder; max: the open-file hard limit - 1024 (the master's connections)",
    )
    p.add_argument("--subscriber-procs", type=int, default=2)
    p.add_argument("--fanout-modes", default="poll,ws", help="poll (long poll), ws (stream)")
    p.add_argument("--fanout-events", type=int, default=100, help="events per burst")
    p.add_argument("--fanout-timeout", type=float, default=180.0)
    p.add_argument("--lease-ttl", type=float, default=2.0)
    p.add_argument("--log-level", default="warning", help="of the masters and workers")
    p.add_argument("--workdir", default=None, help="kept afterwards (default: a temp dir)")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    # child roles (internal)
    p.add_argument("--role", choices=("main", "workers", "subscribers"), default="main")
    p.add_argument("--master", default="")
    p.add_argument("--first", type=int, default=0)
    p.add_argument("--count", type=int, default=0)
    p.add_argument("--mode", default="ws")
    p.add_argument("--from", dest="start", type=int, default=1)
    p.add_argument("--events", type=int, default=0)
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--handshakes", type=int, default=100, help="(subscribers) at once")
    args = p.parse_args(argv)
    if args.quick:
        args.tasks, args.groups, args.workers = 20_000, 10, 40
        args.worker_procs, args.drain_tasks, args.batch = 2, 2000, 2000
        args.subscribers, args.fanout_events = "10,100", 20
    return args


def main() -> int:
    args = parse()
    if args.role == "workers":
        role_workers(args)
        return 0
    if args.role == "subscribers":
        role_subscribers(args)
        return 0
    phases = [p for p in args.phases.split(",") if p]
    unknown = set(phases) - set(PHASES)
    if unknown:
        sys.exit(f"unknown phase(s): {', '.join(sorted(unknown))}")
    raise_nofile()
    figures = Figures()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="mawex-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    bench = Bench(args, workdir, figures)
    figures.put("git", git_describe())
    figures.put("journal", args.journal)
    figures.put("cpus", os.cpu_count())
    figures.put("python", platform.python_version())
    figures.put("load_avg_1m_before", round(os.getloadavg()[0], 2))
    status = 0
    try:
        cluster = master = None
        if "pending" in phases:
            cluster, master = bench.phase_pending()
        if "dispatch" in phases:
            bench.phase_dispatch(cluster, master)
        if "takeover" in phases:
            bench.phase_takeover(cluster, master)
        if "fanout" in phases:
            bench.phase_fanout()
    except Exception as exc:
        status = 2
        print(f"# failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        for cluster_ in bench.clusters:
            for proc in cluster_.procs.values():
                print(f"# --- {proc.name} (pid {proc.pid})\n{proc.log()[-2000:]}", file=sys.stderr)
    finally:
        bench.stop_all()
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(figures.values, indent=2) + "\n")
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
