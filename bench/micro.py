"""Micro-benchmarks of single per-task costs, in one process, without sockets.

Each figure isolates one cost that bench/throughput.py and its profiles point at,
so that an optimisation can be judged by its per-task gain:

- ``sandbox_*``: running the no-op ``echo`` executor through ``LocalSandbox.run``
  (one new thread per task) against a reused thread and an inline call;
- ``ws_deflate_*``: permessage-deflate on a typical worker frame (both ends);
- ``topic_*``: ``Topic.publish``'s decode + re-encode of each record against
  splicing the offset into the stored JSON;
- ``is_topic_*``: the isinstance-of-a-union check against a type lookup;
- ``worker_log_*``: one worker log record through the JSON formatter;
- ``engine_*``: the master's engine alone (MemoryJournal or SQLite) with fake,
  instant workers: the per-task CPU of the engine and core, and how fast the
  protocol can go when every assignment waits for a journal commit;
- ``http_*``: the master's HTTP protocol answering a submit or a task's long poll
  (``GET …?wait=25``, a 404) fed to it in a loop, on a transport that drops what is
  written, with the engine on a MemoryJournal: answered by the protocol itself
  (``direct``) against through the ASGI app (``asgi``), the two alternated.

Run: ``.venv/bin/python bench/micro.py [--json out.json] [--engine-tasks 20000]
[--only http,engine]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import msgspec
from _common import git_describe

from mawex.core import events as ev
from mawex.core.decide import NewTask
from mawex.journal.base import Journal, Record
from mawex.master.engine import Engine, EngineSettings
from mawex.master.topic import Topic
from mawex.model import Task
from mawex.wire import worker as wire

FIGURES: dict[str, float] = {}


def put(name: str, value: float) -> None:
    FIGURES[name] = round(value, 3)
    print(f"{name} {FIGURES[name]}", flush=True)


def per_call_us(fn: Callable[[], object], n: int) -> float:
    """Best of three runs of ``n`` calls, in microseconds per call."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, time.perf_counter() - started)
    return best / n * 1e6


async def async_per_call_us(fn: Callable[[], Any], n: int) -> float:
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(n):
            await fn()
        best = min(best, time.perf_counter() - started)
    return best / n * 1e6


# -- sandbox ------------------------------------------------------------------------


async def sandbox_costs(n: int) -> None:
    from mawex.sandbox.executor_ref import encode_result
    from mawex.sandbox.local import LocalSandbox

    sandbox = LocalSandbox("mawex.examples.demo:echo")
    await sandbox.start()
    task = Task(id="t-1", group="g", payload=None, attempt=1)
    put("sandbox_thread_per_task_us", await async_per_call_us(lambda: sandbox.run(task, None), n))
    await sandbox.close()
    executor = sandbox.executor
    pool = ThreadPoolExecutor(1)
    loop = asyncio.get_running_loop()

    async def pooled() -> None:
        encode_result(await loop.run_in_executor(pool, executor.call, task))

    put("sandbox_reused_thread_us", await async_per_call_us(pooled, n))
    pool.shutdown()

    async def inline() -> None:
        encode_result(executor.call(task))

    put("sandbox_inline_us", await async_per_call_us(inline, n))


# -- WebSocket compression ---------------------------------------------------------------


def deflate_costs(n: int) -> None:
    from websockets.extensions.permessage_deflate import PerMessageDeflate
    from websockets.frames import Frame, Opcode

    assign = wire.encode(
        wire.Assign(group="bench", id="e2e-12345", attempt=1, payload=msgspec.Raw(b"null"))
    )
    sender = PerMessageDeflate(False, False, 15, 15)
    receiver = PerMessageDeflate(False, False, 15, 15)
    frame = Frame(Opcode.TEXT, assign)

    def both_ends() -> None:
        receiver.decode(sender.encode(frame))

    put("ws_frame_bytes", len(assign))
    put("ws_deflate_encode_decode_us_per_frame", per_call_us(both_ends, n))


# -- topic ---------------------------------------------------------------------------


def topic_costs(n: int) -> None:
    event = ev.Completed(
        group="bench", id="e2e-12345", attempt=1, result=msgspec.Raw(b"null"), at=1.5
    )
    body = ev.encode(event)

    def reencode() -> None:  # what Topic.publish did before topic_record_body
        b'{"offset":' + str(7).encode() + b"," + ev.encode(ev.decode(body))[1:]

    def splice() -> None:
        b'{"offset":' + str(7).encode() + b"," + body[1:]

    put("topic_decode_reencode_us_per_event", per_call_us(reencode, n))
    put("topic_splice_us_per_event", per_call_us(splice, n))
    scheduled = ev.Scheduled(group="bench", id="x", attempt=1, worker="w", pod="p", at=1.0)
    accepted = ev.Accepted(group="bench", id="x", payload=msgspec.Raw(b"null"), at=1.0)
    classes = frozenset({ev.Scheduled, ev.Retrying, ev.Completed, ev.Failed, ev.Cancelled})

    def by_isinstance() -> None:
        ev.is_topic(scheduled)
        ev.is_topic(accepted)

    def by_type() -> None:
        _ = type(scheduled) in classes
        _ = type(accepted) in classes

    put("is_topic_isinstance_ns_per_call", per_call_us(by_isinstance, n) * 500)
    put("is_topic_type_lookup_ns_per_call", per_call_us(by_type, n) * 500)


async def topic_publish_cost(n: int) -> None:
    from mawex.journal.memory import MemoryJournal

    topic = Topic(MemoryJournal())
    body = ev.encode(
        ev.Completed(group="bench", id="e2e-1", attempt=1, result=msgspec.Raw(b"null"), at=1.5)
    )
    records = [Record(i + 1, i + 1, 1.5, body) for i in range(100)]
    started = time.perf_counter()
    for _ in range(n // 100):
        topic.publish(records)
    elapsed = time.perf_counter() - started
    await asyncio.sleep(0)
    put("topic_publish_us_per_event", elapsed / (n // 100 * 100) * 1e6)


def snapshot_cost(tasks: int) -> None:
    """``MasterState.snapshot()`` runs on the engine loop: it stalls every turn meanwhile."""
    from mawex.core.state import MasterState

    state = MasterState()
    for i in range(tasks):
        g, id = "bench", f"e2e-{i}"
        state.apply(ev.Accepted(group=g, id=id, payload=msgspec.Raw(b"null"), at=1.0))
        state.apply(ev.Scheduled(group=g, id=id, attempt=1, worker="w", pod="p", at=1.0))
        state.apply(ev.Completed(group=g, id=id, attempt=1, result=msgspec.Raw(b"null"), at=1.0))
    started = time.perf_counter()
    body = state.snapshot()
    put(f"snapshot_ms_{tasks}_tasks", (time.perf_counter() - started) * 1e3)
    put(f"snapshot_kib_{tasks}_tasks", len(body) / 1024)


# -- worker logging ------------------------------------------------------------------------


def logging_cost(n: int) -> None:
    from mawex.logs import JsonFormatter

    logger = logging.getLogger("bench.micro")
    with open(os.devnull, "w") as sink:
        handler = logging.StreamHandler(sink)
        handler.setFormatter(JsonFormatter())
        logger.handlers[:] = [handler]
        logger.setLevel(logging.INFO)
        logger.propagate = False
        extra = {"action": "finished", "worker": "pod-1-bench-1a2b3c4d", "attempt": "bench/e-1#1"}

        def record() -> None:
            logger.info("attempt finished", extra={**extra, "ok": True, "error": None})

        put("worker_log_record_us", per_call_us(record, n))
        logger.setLevel(logging.WARNING)
        put("worker_log_disabled_us", per_call_us(record, n))
        logger.handlers.clear()


# -- the engine alone -----------------------------------------------------------------------


class FakeSession:
    """A worker that finishes every assignment at once (no socket, no executor)."""

    def __init__(self, engine: Engine, worker: str) -> None:
        self.engine = engine
        self.worker = worker
        self.frames = 0

    def send(self, frame: bytes) -> None:
        self.frames += 1
        message = wire.decode_master_message(frame)
        if isinstance(message, wire.Assign):
            finished = wire.Finished(
                group=message.group,
                id=message.id,
                attempt=message.attempt,
                ok=True,
                result=msgspec.Raw(b"null"),
            )
            # what the WS receive loop does with the decoded frame
            frame_in = wire.encode(finished)
            loop = asyncio.get_running_loop()
            loop.call_soon(
                self.engine.worker_message,
                self.worker,
                self,
                wire.decode_worker_message(frame_in),
            )

    def close(self, code: int, reason: str) -> None:
        pass


async def engine_run(journal: Journal, name: str, tasks: int, pods: int) -> None:
    engine = Engine(journal, EngineSettings(lease_ttl=30.0))
    await engine.start()
    await engine.wait_leader(30)
    sessions = []
    for i in range(pods):
        worker = f"w-{i}"
        session = FakeSession(engine, worker)
        await engine.worker_hello(wire.Hello(worker=worker, group="g", pod=f"p-{i}"), session)
        sessions.append(session)
    batch = [NewTask(group="g", id=f"t-{i}", payload=msgspec.Raw(b"null")) for i in range(tasks)]
    done = asyncio.Event()
    target = engine.state.counts.completed + tasks

    def observe(events: list[ev.Event], now: float) -> None:
        if engine.state.counts.completed >= target:
            done.set()

    engine.observers.append(observe)
    cpu = time.process_time()
    started = time.perf_counter()
    for i in range(0, tasks, 500):
        await engine.submit_batch(batch[i : i + 500])
    await asyncio.wait_for(done.wait(), 600)
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu
    stats = engine.stats
    put(f"engine_{name}_tasks_per_s", tasks / wall)
    put(f"engine_{name}_cpu_us_per_task", cpu / tasks * 1e6)
    put(f"engine_{name}_events_per_append", stats["appended_events"] / max(1, stats["appends"]))
    put(f"engine_{name}_append_ms_mean", stats["append_seconds"] / max(1, stats["appends"]) * 1e3)
    await engine.stop()


async def engine_costs(tasks: int, pods: int) -> None:
    from mawex.journal.memory import MemoryJournal
    from mawex.journal.sqlite import SQLiteJournal

    await engine_run(MemoryJournal(), "memory", tasks, pods)
    syncs: tuple[Literal["full", "normal"], ...] = ("full", "normal")
    for sync in syncs:
        with tempfile.TemporaryDirectory(prefix="mawex-micro-") as tmp:
            journal = SQLiteJournal(Path(tmp) / "m.db", synchronous=sync)
            await engine_run(journal, f"sqlite_{sync}", tasks, pods)


# -- the master's HTTP protocol ---------------------------------------------------------


class _DroppingTransport(asyncio.Transport):
    def write(self, data: bytes | bytearray | memoryview) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(
            name, default
        )


async def http_costs(n: int) -> None:
    import itertools

    import uvicorn
    from uvicorn.server import ServerState

    from mawex.journal.memory import MemoryJournal
    from mawex.server.app import create_app
    from mawex.server.http_protocol import guarded_http_protocol
    from mawex.server.limits import NetLimits

    engine = Engine(MemoryJournal(), EngineSettings(lease_ttl=5.0))
    await engine.start()
    await engine.wait_leader(10)
    app = create_app(engine)
    protocols = {}
    for way, direct in (("direct", app.direct), ("asgi", None)):
        config = uvicorn.Config(
            app,
            http=guarded_http_protocol(NetLimits(), direct),
            lifespan="off",
            log_level="warning",
            access_log=False,  # as a master's
        )
        config.load()
        protocol: Any = config.http_protocol_class(  # type: ignore[call-arg]
            config=config, server_state=ServerState(), app_state={}
        )
        protocol.connection_made(_DroppingTransport())
        protocols[way] = protocol
    ids = itertools.count()

    def submit() -> bytes:
        body = b'{"id":"t%d","group":"g","payload":1}' % next(ids)
        head = b"POST /v1/tasks HTTP/1.1\r\nhost: m\r\ncontent-length: %d\r\n\r\n"
        return head % len(body) + body

    get = b"GET /v1/tasks/g/nope?wait=25 HTTP/1.1\r\nhost: m\r\n\r\n"  # a long poll
    requests: dict[str, Callable[[], bytes]] = {"submit": submit, "get": lambda: get}
    for name, make in requests.items():
        times: dict[str, list[float]] = {way: [] for way in protocols}
        for _ in range(5):
            for way, protocol in protocols.items():
                started = time.perf_counter()
                for _ in range(n // 5):
                    protocol.data_received(make())
                    while protocol.tasks:
                        await asyncio.gather(*protocol.tasks)
                times[way].append((time.perf_counter() - started) / (n // 5) * 1e6)
        for way, values in times.items():
            put(f"http_{name}_{way}_us", sorted(values)[len(values) // 2])
    await engine.stop()


SECTIONS = ("sandbox", "deflate", "topic", "logging", "snapshot", "engine", "http")


async def main_async(args: argparse.Namespace) -> None:
    only = set(args.only.split(",")) if args.only else set(SECTIONS)
    if "sandbox" in only:
        await sandbox_costs(args.n // 10)
    if "deflate" in only:
        deflate_costs(args.n)
    if "topic" in only:
        topic_costs(args.n)
        await topic_publish_cost(args.n)
    if "logging" in only:
        logging_cost(args.n // 2)
    if "snapshot" in only:
        snapshot_cost(args.snapshot_tasks)
    if "engine" in only:
        await engine_costs(args.engine_tasks, args.pods)
    if "http" in only:
        await http_costs(args.n)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="calls per micro-benchmark")
    parser.add_argument("--engine-tasks", type=int, default=20_000)
    parser.add_argument("--snapshot-tasks", type=int, default=50_000)
    parser.add_argument("--pods", type=int, default=4, help="fake workers, one pod each")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--only", help=f"comma-separated sections of {', '.join(SECTIONS)}")
    args = parser.parse_args()
    unknown = set(args.only.split(",")) - set(SECTIONS) if args.only else set()
    if unknown:
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))}")
    put("load_avg_1m_before", os.getloadavg()[0])
    print(f"git {git_describe()}", flush=True)
    try:
        import uvloop
    except ImportError:
        asyncio.run(main_async(args))
    else:
        uvloop.run(main_async(args))
    if args.json:
        Path(args.json).write_text(json.dumps(FIGURES, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
