"""The floor of a sequential round trip on this machine: mawex's shape without mawex.

The same three processes as ``bench/roundtrip.py``, doing only what no scheduler of
this design can skip: a client on a blocking socket sends a request; a "master"
(uvloop) commits one row to a SQLite WAL file and forwards a message to a "worker"
(uvloop), which hands it to a thread and back (as the local sandbox runs a plain
``def`` executor); the master commits a second row and answers the client. Every
message is ``--size`` bytes on a plain TCP connection: no HTTP, no WebSocket
framing, no JSON, no validation, no scheduling state, no metrics. Whatever mawex
adds to a round trip is its p50 minus this one, measured in the same minutes.

``--journal`` is ``sqlite`` (``synchronous=FULL``: an fsync per commit, as mawex's
default), ``sqlite-normal`` or ``none``; ``--no-thread`` runs the worker's step on
its event loop (an ``async def`` executor); ``--busy-poll S`` keeps the master's
loop polling S seconds after each message (``mawex master --busy-poll``).

Run: ``.venv/bin/python bench/floor.py [--journal sqlite-normal] [--busy-poll 0.0005]``
"""

from __future__ import annotations

import argparse
import asyncio
import queue
import socket
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from _common import Processes, free_port, percentile, wait_until

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

JOURNALS = ("sqlite", "sqlite-normal", "none")


class _Framed(asyncio.Protocol):
    """Calls ``on_message`` with each ``size``-byte message that arrives."""

    def __init__(self, size: int, on_message: Callable[[bytes], None]) -> None:
        self.size = size
        self.on_message = on_message
        self.buffer = b""
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= self.size:
            message, self.buffer = self.buffer[: self.size], self.buffer[self.size :]
            self.on_message(message)


def _journal(path: str, journal: str) -> Callable[[bytes], None]:
    """A commit of one row per call (nothing, for ``none``)."""
    if journal == "none":
        return lambda body: None
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {'FULL' if journal == 'sqlite' else 'NORMAL'}")
    conn.execute("CREATE TABLE records (seq INTEGER PRIMARY KEY, at REAL, body BLOB)")
    execute = conn.execute

    def commit(body: bytes) -> None:
        execute("BEGIN IMMEDIATE")
        execute("INSERT INTO records (at, body) VALUES (?, ?)", (time.time(), body))
        execute("COMMIT")

    return commit


async def _master(args: argparse.Namespace) -> None:
    from mawex.busy_poll import BusyPoll

    commit = _journal(args.db, args.journal)
    poll = BusyPoll(args.busy_poll) if args.busy_poll else None
    peers: dict[str, _Framed] = {}

    def from_client(message: bytes) -> None:
        commit(message)
        peers["worker"].transport.write(message)
        if poll is not None:
            poll.kick()

    def from_worker(message: bytes) -> None:
        commit(message)
        peers["client"].transport.write(message)
        if poll is not None:
            poll.kick()

    def accept(role: str, handler: Callable[[bytes], None]) -> Callable[[], _Framed]:
        def protocol() -> _Framed:
            peers[role] = _Framed(args.size, handler)
            return peers[role]

        return protocol

    loop = asyncio.get_running_loop()
    workers = await loop.create_server(accept("worker", from_worker), "127.0.0.1", args.port)
    while "worker" not in peers:  # clients are let in once the worker is there
        await asyncio.sleep(0.01)
    clients = await loop.create_server(accept("client", from_client), "127.0.0.1", args.port + 1)
    async with workers, clients:
        await asyncio.gather(workers.serve_forever(), clients.serve_forever())


async def _worker(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    jobs: queue.SimpleQueue[bytes] = queue.SimpleQueue()
    conn: _Framed

    def reply(message: bytes) -> None:
        conn.transport.write(message)

    def executor_thread() -> None:
        while True:
            message = jobs.get()
            loop.call_soon_threadsafe(reply, message)

    if args.thread:
        threading.Thread(target=executor_thread, daemon=True).start()
    conn = _Framed(args.size, jobs.put if args.thread else reply)
    for _ in range(3000):  # until the master listens
        try:
            await loop.create_connection(lambda: conn, "127.0.0.1", args.port)
            break
        except OSError:
            await asyncio.sleep(0.01)
    await asyncio.Event().wait()


def _client(port: int, size: int, rounds: int) -> list[float]:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    message = b"x" * size
    clock = time.perf_counter
    samples: list[float] = []
    for i in range(rounds + 200):  # the first 200 warm up
        started = clock()
        sock.sendall(message)
        got = 0
        while got < size:
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError("the master closed the connection")
            got += len(chunk)
        if i >= 200:
            samples.append(clock() - started)
    sock.close()
    return samples


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    add = parser.add_argument
    add("--journal", choices=JOURNALS, default="sqlite")
    add("--rounds", type=int, default=3000, help="measured round trips (after 200 more)")
    add("--size", type=int, default=200, help="bytes of each message")
    add("--no-thread", dest="thread", action="store_false", help="the worker skips the thread")
    add("--busy-poll", type=float, default=0.0, help="seconds the master polls after a message")
    add("--role", choices=("master", "worker"), help=argparse.SUPPRESS)
    add("--port", type=int, help=argparse.SUPPRESS)
    add("--db", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    import uvloop

    if args.role == "master":
        uvloop.run(_master(args))
        return 0
    if args.role == "worker":
        uvloop.run(_worker(args))
        return 0
    flags = [
        *("--journal", args.journal, "--size", str(args.size)),
        *("--busy-poll", str(args.busy_poll)),
        *(() if args.thread else ("--no-thread",)),
    ]
    port = free_port()
    while not _free(port + 1):
        port = free_port()
    with tempfile.TemporaryDirectory(prefix="mawex-floor-") as tmp:
        procs = Processes(Path(tmp))
        try:
            role = [sys.executable, __file__, *flags, "--port", str(port), "--role"]
            master = procs.spawn("master", [*role, "master", "--db", f"{tmp}/floor.db"])
            worker = procs.spawn("worker", [*role, "worker"])
            wait_until(lambda: _listening(master.alive, port + 1), 30, "the worker connected")
            before = [master.cpu_seconds(), worker.cpu_seconds()]
            own = time.process_time()
            samples = _client(port + 1, args.size, args.rounds)
            own = time.process_time() - own
            master_us, worker_us = (
                (proc.cpu_seconds() - cpu) / len(samples) * 1e6
                for proc, cpu in zip((master, worker), before, strict=True)
            )
        finally:
            procs.stop_all()
    print(
        f"floor journal {args.journal} thread {'yes' if args.thread else 'no'} "
        f"busy-poll {args.busy_poll * 1e6:.0f} us, {args.size}-byte messages, "
        f"{len(samples)} round trips: p50 {percentile(samples, 0.5) * 1e3:.3f} ms "
        f"p99 {percentile(samples, 0.99) * 1e3:.3f} ms | CPU per round trip: "
        f"master {master_us:.0f} us, worker {worker_us:.0f} us, "
        f"client {own / len(samples) * 1e6:.0f} us"
    )
    return 0


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _listening(alive: Callable[[], bool], port: int) -> bool:
    if not alive():
        raise RuntimeError("the floor master exited")
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


if __name__ == "__main__":
    sys.exit(main())
