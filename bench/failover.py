"""Failover time and replay speed of real mawex masters, on SQLite, PostgreSQL and Redis.

For each journal backend and each journal size (events of history):

1. **fill**: one process writes a valid history straight through the journal API,
   as a leader would: the real core (``mawex.core.decide``) accepts tasks and
   cancels them (two events per task, one of them on the result topic) and
   purges finished tasks beyond ``--retain-results`` (as the master's timers do),
   appended in batches of ``--batch`` events under a lease.
2. **replay**: a cold standby (an :class:`~mawex.master.engine.Engine` on a new
   journal handle) rebuilds its state from the journal without a snapshot:
   ``replay.<backend>.<size>.events_per_s``.
3. **snapshot**: the state is saved and the journal trimmed below it, exactly as
   a leader does every ``--snapshot-every`` events (the default is the
   master's); ``cold_rebuild.<backend>.<size>.s`` is then a cold standby's
   rebuild from that snapshot.
4. **failover**: two ``mawex master`` processes (``--lease-ttl``) and one
   worker; ``--kills`` times: SIGKILL the leader, at once submit a probe task
   through a client that retries across the failover, and take the ``at`` of
   the probe's ``scheduled`` event on the result topic (stamped by the new
   leader when it dispatched it) minus the kill time. The killed master is
   restarted as a standby before the next kill. ``failover.<backend>.<size>.*``
   are the median and the max; the target is ``2 x lease TTL + 1 s``. A standby
   sees the killed leader's process gone and does not wait for its lease (SQLite:
   :mod:`mawex.journal.presence`; PostgreSQL: the leader's presence session; Redis:
   its presence subscription).

Prints one ``name value`` line per figure (``--json FILE`` writes them too); the
exit status is 1 if a failover missed the target.

Run: ``.venv/bin/python bench/failover.py [--backends sqlite,postgresql,redis]
[--sizes 10000,1000000] [--lease-ttl 2] [--kills 3] [--postgresql URL] [--redis URL]``
(PostgreSQL: a superuser URL, default ``MAWEX_TEST_POSTGRESQL`` or
``postgresql://postgres@127.0.0.1:5432/postgres``; a database is created and
dropped per size. Redis: default ``MAWEX_TEST_REDIS`` or ``redis://127.0.0.1:6379/0``;
a master id (key namespace) is used and its keys deleted per size).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import msgspec
from _common import PROBE

import mawex
from mawex.cluster import LocalCluster
from mawex.core import decide, timers
from mawex.core import events as ev
from mawex.core.state import MasterState, collector_paused
from mawex.journal import open_journal
from mawex.journal.base import Journal, Record, Snapshot
from mawex.master.engine import Engine, EngineSettings

DEFAULT_PG = os.environ.get(
    "MAWEX_TEST_POSTGRESQL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
DEFAULT_REDIS = os.environ.get("MAWEX_TEST_REDIS", "redis://127.0.0.1:6379/0")
PROBE_GROUP = "probe"
FILL_GROUPS = ("fill-a", "fill-b", "fill-c", "fill-d")


class Figures:
    """Collects and prints ``name value`` lines."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def put(self, name: str, value: Any, note: str = "") -> None:
        self.values[name] = value
        print(f"{name} {value}{'  # ' + note if note else ''}", flush=True)


def size_label(n: int) -> str:
    if n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n % 1000 == 0:
        return f"{n // 1000}k"
    return str(n)


# -- journals -----------------------------------------------------------------------


@dataclass
class Store:
    """One journal under test: its URL and how to get rid of it."""

    backend: str
    url: str
    workdir: Path
    admin: str | None = None
    database: str | None = None
    #: The masters' ``--master-id``: the journal namespace.
    namespace: str = "default"

    @classmethod
    async def create(
        cls, backend: str, workdir: Path, pg_url: str, label: str, redis_url: str = DEFAULT_REDIS
    ) -> Store:
        if backend == "redis":
            namespace = f"bench-{os.getpid()}-{label.replace('.', '-')}-{uuid.uuid4().hex[:6]}"
            return cls(backend, redis_url, workdir, namespace=namespace)
        if backend == "sqlite":
            path = workdir / f"failover-{label}.db"
            for stale in (
                path,
                path.with_name(path.name + "-wal"),
                path.with_name(path.name + "-shm"),
            ):
                stale.unlink(missing_ok=True)
            return cls(backend, f"sqlite:///{path}", workdir)
        import asyncpg

        database = f"mawex_bench_{os.getpid()}_{label.lower()}_{uuid.uuid4().hex[:6]}"
        conn = await asyncpg.connect(pg_url, timeout=10)
        try:
            await conn.execute(f'CREATE DATABASE "{database}"')
        finally:
            await conn.close()
        url = urlsplit(pg_url)._replace(path=f"/{database}").geturl()
        return cls(backend, url, workdir, admin=pg_url, database=database)

    def fill_url(self) -> str:
        # the fill is a bulk load: SQLite need not fsync every batch (the masters fsync theirs)
        return f"{self.url}?synchronous=normal" if self.backend == "sqlite" else self.url

    async def drop(self) -> None:
        if self.backend == "redis":
            import redis.asyncio as aioredis

            from mawex.journal.redis import KEY_PREFIX

            client = aioredis.Redis.from_url(self.url)
            try:
                pattern = KEY_PREFIX.format(self.namespace) + "*"
                keys = [key async for key in client.scan_iter(match=pattern, count=1000)]
                if keys:
                    await client.delete(*keys)
            finally:
                await client.aclose()
            return
        if self.database is None or self.admin is None:
            return
        import asyncpg

        conn = await asyncpg.connect(self.admin, timeout=10)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        finally:
            await conn.close()


# -- 1. fill ------------------------------------------------------------------------


def _records(events: list[ev.Event], offset: int, topic: int) -> tuple[list[Record], int, int]:
    out = []
    for event in events:
        offset += 1
        if ev.is_topic(event):
            out.append(Record(offset, topic, event.at, ev.encode(event)))
            topic += 1
        else:
            out.append(Record(offset, None, event.at, ev.encode(event)))
    return out, offset, topic


async def fill(
    url: str, namespace: str, events: int, batch: int, limits: decide.Limits
) -> tuple[int, float]:
    """Append about ``events`` events of valid history; returns (events written, seconds)."""
    journal = open_journal(url, namespace=namespace)
    await journal.open()
    started = time.perf_counter()
    try:
        lease = await journal.acquire("bench-fill", 3600, None)
        assert lease is not None, "the journal's lease is taken"
        state = MasterState()
        offset, topic, i = 0, 1, 0
        pending: list[Record] = []
        now = time.time() - 3600
        while offset < events:
            group = FILL_GROUPS[i % len(FILL_GROUPS)]
            task = decide.NewTask(group, f"f{i:08d}", msgspec.Raw(b'{"n":%d}' % i))
            decide.submit(state, task, now, limits)
            decide.cancel(state, group, task.id, now)
            if i % 500 == 0:
                timers.tick(state, now, limits)  # purges beyond retain_results, as a master does
            i += 1
            now += 0.001
            new, _ = state.take_outbox()
            records, offset, topic = _records(new, offset, topic)
            pending.extend(records)
            if len(pending) >= batch or offset >= events:
                await journal.append(pending, lease.epoch)
                pending = []
        if pending:
            await journal.append(pending, lease.epoch)
        await journal.release(lease)
        return offset, time.perf_counter() - started
    finally:
        await journal.close()


# -- 2, 3. replay and snapshot --------------------------------------------------------


async def cold_rebuild(url: str, namespace: str = "default") -> tuple[float, Engine]:
    """Seconds a new standby takes to rebuild its state from the journal (snapshot + replay),
    with the cycle collector paused and then frozen, as ``mawex master`` does."""
    engine = Engine(open_journal(url, namespace=namespace), EngineSettings())
    await engine.journal.open()
    started = time.perf_counter()
    with collector_paused(freeze=True):
        await engine._rebuild()
    return time.perf_counter() - started, engine


async def snapshot_and_trim(engine: Engine, retain_topic: int) -> tuple[int, int, float]:
    """Save the engine's state as the journal's snapshot and trim below it, like a leader."""
    journal: Journal = engine.journal
    lease = None
    while lease is None:
        lease = await journal.acquire("bench-snapshot", 60, None)
        if lease is None:
            await asyncio.sleep(0.1)
    started = time.perf_counter()
    state = engine.state
    await journal.save_snapshot(Snapshot(state.offset, state.snapshot()), lease.epoch)
    trimmed = await journal.trim(state.offset, max(1, state.topic_next - retain_topic), lease.epoch)
    await journal.release(lease)
    return state.offset, trimmed, time.perf_counter() - started


# -- 4. failover --------------------------------------------------------------------


def _scheduled_at(urls: list[str], probe: str, from_offset: int, deadline: float) -> float:
    """The ``at`` of the probe's ``scheduled`` event, read from any master's topic."""
    offset = from_offset
    with httpx.Client(timeout=3.0) as http:
        while time.monotonic() < deadline:
            for url in urls:
                try:
                    response = http.get(
                        f"{url}/v1/results", params={"from": offset, "limit": 1000, "wait": 1}
                    )
                except httpx.HTTPError:
                    continue
                if response.status_code != 200:
                    continue
                body = response.json()
                for event in body["events"]:
                    if event["id"] == probe and event["type"] == "scheduled":
                        return float(event["at"])
                offset = body["next"]
                break
            else:
                time.sleep(0.02)
    raise TimeoutError(f"the probe {probe} was not dispatched in time")


def _topic_next(url: str) -> int:
    return int(PROBE.get(f"{url}/v1/state", timeout=5).json()["topic_next"])


def measure_failovers(
    store: Store, workdir: Path, args: argparse.Namespace, figures: Figures, name: str
) -> list[float]:
    extra = ("--lease-ttl", str(args.lease_ttl), "--master-id", store.namespace)
    cluster = LocalCluster(workdir / f"cluster-{name.replace('.', '-')}", journal=store.url)
    samples: list[float] = []
    try:
        started = time.perf_counter()
        cluster.start_master("a", *extra, wait=False)
        cluster.start_master("b", *extra, wait=False)
        for proc in list(cluster.procs.values()):
            cluster.wait_healthy(proc, timeout=600)
        leader = cluster.wait_leader(timeout=600)
        figures.put(
            f"startup.{name}.s",
            round(time.perf_counter() - started, 2),
            "two masters: healthy and one leading",
        )
        cluster.start_worker("w", "mawex.examples.demo:echo", groups=PROBE_GROUP, pod="bench")
        cluster.wait_workers(1, timeout=120)
        with mawex.Client(cluster.master_urls, timeout=5.0, failover_timeout=120) as client:
            client.submit(PROBE_GROUP, None, id="warm-up")
            client.result(PROBE_GROUP, "warm-up", timeout=60)
            for k in range(args.kills):
                leader = cluster.wait_leader(timeout=120)
                standby = next(
                    p for p in cluster.procs.values() if p.args[0] == "master" and p is not leader
                )
                _wait_caught_up(cluster, leader, standby)
                from_offset = _topic_next(leader.url or "")
                probe = f"probe-{k}-{uuid.uuid4().hex[:6]}"
                killed_at = time.time()
                leader.signal(signal.SIGKILL)
                client.submit(PROBE_GROUP, None, id=probe)
                at = _scheduled_at([standby.url or ""], probe, from_offset, time.monotonic() + 120)
                samples.append(at - killed_at)
                leader.popen.wait(timeout=30)
                client.result(PROBE_GROUP, probe, timeout=60)
                cluster.start_master(leader.name, *extra)
    finally:
        cluster.stop_all()
    return samples


def _wait_caught_up(cluster: LocalCluster, leader: Any, standby: Any, timeout: float = 300) -> None:
    """Wait until the standby has applied everything the leader has (it tails the journal)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        a, b = cluster.state_of(leader), cluster.state_of(standby)
        if a and b and b["offset"] >= a["offset"] and not b["leader"]:
            return
        time.sleep(0.1)
    raise TimeoutError("the standby did not catch up")


# -- main ---------------------------------------------------------------------------


async def prepare(
    store: Store, size: int, args: argparse.Namespace, figures: Figures, name: str
) -> None:
    limits = decide.Limits(retain_results=args.retain_results)
    written, seconds = await fill(store.fill_url(), store.namespace, size, args.batch, limits)
    figures.put(f"fill.{name}.events_per_s", round(written / seconds), f"{written} events")
    replay_s, engine = await cold_rebuild(store.url, store.namespace)
    figures.put(
        f"replay.{name}.events_per_s",
        round(written / replay_s),
        f"no snapshot: {written} events in {replay_s:.2f}s",
    )
    figures.put(f"replay.{name}.tasks_in_state", len(engine.state.tasks))
    offset, trimmed, snap_s = await snapshot_and_trim(engine, args.retain_topic)
    await engine.journal.close()
    figures.put(
        f"snapshot.{name}.s", round(snap_s, 2), f"snapshot at {offset}, {trimmed} records trimmed"
    )
    rebuild_s, engine = await cold_rebuild(store.url, store.namespace)
    await engine.journal.close()
    figures.put(f"cold_rebuild.{name}.s", round(rebuild_s, 3), "from the snapshot")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--sizes", default="10000,1000000")
    parser.add_argument("--lease-ttl", type=float, default=2.0)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--retain-results", type=int, default=100_000)
    parser.add_argument("--retain-topic", type=int, default=1_000_000)
    parser.add_argument("--postgresql", default=DEFAULT_PG)
    parser.add_argument("--redis", default=DEFAULT_REDIS)
    parser.add_argument("--workdir", default=None, help="kept afterwards (default: a temp dir)")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    figures = Figures()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="mawex-failover-"))
    workdir.mkdir(parents=True, exist_ok=True)
    target = 2 * args.lease_ttl + 1
    missed = False
    print(
        f"# lease TTL {args.lease_ttl}s, target failover <= {target}s, "
        f"{os.cpu_count()} CPUs, python {sys.version.split()[0]}",
        flush=True,
    )
    try:
        for backend in args.backends.split(","):
            for size in (int(s) for s in args.sizes.split(",")):
                name = f"{backend}.{size_label(size)}"
                store = asyncio.run(
                    Store.create(backend, workdir, args.postgresql, name, args.redis)
                )
                try:
                    asyncio.run(prepare(store, size, args, figures, name))
                    samples = measure_failovers(store, workdir, args, figures, name)
                finally:
                    asyncio.run(store.drop())
                worst = max(samples)
                missed |= worst > target
                figures.put(
                    f"failover.{name}.median_s",
                    round(statistics.median(samples), 2),
                    f"kill -> probe dispatched, {len(samples)} kills: "
                    + ", ".join(f"{s:.2f}" for s in samples),
                )
                figures.put(
                    f"failover.{name}.max_s",
                    round(worst, 2),
                    f"target <= {target:g}s: {'ok' if worst <= target else 'MISSED'}",
                )
    finally:
        if args.json:
            Path(args.json).write_text(json.dumps(figures.values, indent=2) + "\n")
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
