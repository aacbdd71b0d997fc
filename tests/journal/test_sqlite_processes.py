"""Cross-process fencing on one SQLite file, with real master-like processes.

Each child process opens its own journal on the shared file and runs the JSON
commands the test sends on its stdin, one reply line each.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

import mawex
from mawex.journal import open_journal
from mawex.journal.presence import DIRECTORY_SUFFIX

NAMESPACE = "procs"
REPLY_TIMEOUT = 30.0
SRC = str(Path(mawex.__file__).resolve().parents[1])

CHILD = r"""
import asyncio, json, sys, time
from mawex.errors import FencedOut
from mawex.journal import open_journal
from mawex.journal.base import Record, Snapshot


async def serve(journal):
    lease = None
    while True:
        line = await asyncio.to_thread(sys.stdin.readline)
        if not line:
            return
        cmd = json.loads(line)
        op = cmd["op"]
        try:
            if op == "acquire":
                lease = await journal.acquire(cmd["holder"], cmd["ttl"], None)
                reply = {"epoch": lease.epoch if lease else None}
            elif op == "acquire_when_free":
                while (lease := await journal.acquire(cmd["holder"], cmd["ttl"], None)) is None:
                    await asyncio.sleep(0.02)
                reply = {"epoch": lease.epoch}
            elif op == "append":
                start = cmd.get("start") or await journal.last_offset() + 1
                records = [
                    Record(start + i, None, time.time(), cmd["body"].encode())
                    for i in range(cmd["count"])
                ]
                await journal.append(records, lease.epoch)
                reply = {"offsets": [r.offset for r in records]}
            elif op == "append_until_fenced":
                acked, offset = [], cmd["start"]
                try:
                    while True:
                        record = Record(offset, None, time.time(), cmd["body"].encode())
                        await journal.append([record], lease.epoch)
                        acked.append(offset)
                        offset += 1
                        await asyncio.sleep(0.002)
                except FencedOut as e:
                    reply = {"acked": acked, "error": "FencedOut", "message": str(e)}
            elif op == "snapshot":
                await journal.save_snapshot(Snapshot(cmd["offset"], b"snap"), lease.epoch)
                reply = {}
            elif op == "trim":
                reply = {"deleted": await journal.trim(cmd["before"], 1, lease.epoch)}
            elif op == "renew":
                lease = await journal.renew(lease, cmd["ttl"])
                reply = {"epoch": lease.epoch}
            elif op == "release":
                await journal.release(lease)
                reply = {}
            else:
                reply = {"error": "unknown op " + op}
        except Exception as e:
            reply = {"error": type(e).__name__, "message": str(e)}
        print(json.dumps(reply), flush=True)


async def main(url, namespace):
    journal = open_journal(url, namespace=namespace)
    await journal.open()
    print(json.dumps({"ready": True}), flush=True)
    try:
        await serve(journal)
    finally:
        await journal.close()


asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


class Child:
    """A process with its own journal on the shared file, driven by JSON commands."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, url: str, namespace: str = NAMESPACE) -> Child:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CHILD,
            url,
            namespace,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        child = cls(proc)
        assert await child.reply() == {"ready": True}
        return child

    async def send(self, op: str, **args: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps({"op": op, **args}) + "\n").encode())
        await self.proc.stdin.drain()

    async def reply(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), REPLY_TIMEOUT)
        except TimeoutError:
            pytest.fail("child process did not answer in time")
        if not line:
            assert self.proc.stderr is not None
            stderr = (await self.proc.stderr.read()).decode()
            pytest.fail(f"child process exited:\n{stderr}")
        reply: dict[str, Any] = json.loads(line)
        return reply

    async def call(self, op: str, **args: Any) -> dict[str, Any]:
        await self.send(op, **args)
        return await self.reply()

    async def stop(self) -> None:
        if self.proc.returncode is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        assert self.proc.stdout is not None and self.proc.stderr is not None
        await self.proc.stdout.read()
        await self.proc.stderr.read()


@asynccontextmanager
async def children(url: str, namespace: str = NAMESPACE) -> AsyncIterator[Callable[[], Any]]:
    """A function that starts children on the journal at ``url``, all stopped on exit."""
    async with AsyncExitStack() as stack:

        async def start() -> Child:
            child = await Child.start(url, namespace)
            stack.push_async_callback(child.stop)
            return child

        yield start


async def paused_holder_kept_killed_one_taken_over(a: Child, b: Child, ttl: float) -> None:
    """A leads with a lease of ``ttl`` (longer than the test); paused (SIGSTOP), it
    keeps it from B; killed, B takes it as soon as the server has seen A's
    connections close (at once, but not synchronously)."""
    assert await a.call("acquire", holder="A", ttl=ttl) == {"epoch": 1}
    assert await b.call("acquire", holder="B", ttl=ttl) == {"epoch": None}, "A runs"
    a.proc.send_signal(signal.SIGSTOP)  # paused, not gone: its connections stay
    try:
        assert await b.call("acquire", holder="B", ttl=ttl) == {"epoch": None}
    finally:
        a.proc.send_signal(signal.SIGCONT)
    assert await a.call("renew", ttl=ttl) == {"epoch": 1}
    a.proc.kill()
    await a.proc.wait()
    assert await b.call("acquire_when_free", holder="B", ttl=ttl) == {"epoch": 2}


@pytest.fixture
async def spawn(tmp_path: Path) -> AsyncIterator[Callable[[], Any]]:
    """Start children on one journal file; they are stopped after the test."""
    async with children(f"sqlite:///{tmp_path / 'shared.db'}") as start:
        yield start


async def bodies(url_dir: Path) -> list[tuple[int, bytes]]:
    journal = open_journal(f"sqlite:///{url_dir / 'shared.db'}", namespace=NAMESPACE)
    await journal.open()
    try:
        return [(r.offset, r.body) for r in await journal.read(1, 100_000)]
    finally:
        await journal.close()


async def test_takeover_fences_the_old_process(spawn: Any, tmp_path: Path) -> None:
    a, b = await asyncio.gather(spawn(), spawn())
    assert await a.call("acquire", holder="A", ttl=1.0) == {"epoch": 1}
    assert await a.call("append", start=1, count=2, body="A") == {"offsets": [1, 2]}
    assert await a.call("snapshot", offset=1) == {}
    assert await b.call("acquire", holder="B", ttl=30) == {"epoch": None}, "live lease taken"
    await asyncio.sleep(1.3)
    assert await b.call("acquire", holder="B", ttl=30) == {"epoch": 2}

    for op, args in [
        ("append", {"start": 3, "count": 1, "body": "A"}),
        ("snapshot", {"offset": 2}),
        ("trim", {"before": 2}),
        ("renew", {"ttl": 30}),
    ]:
        reply = await a.call(op, **args)
        assert reply["error"] == "FencedOut", (op, reply)

    assert await bodies(tmp_path) == [(1, b"A"), (2, b"A")], "nothing from A after the takeover"
    assert await b.call("append", count=1, body="B") == {"offsets": [3]}
    assert await bodies(tmp_path) == [(1, b"A"), (2, b"A"), (3, b"B")]


async def test_old_process_appending_during_takeover_loses_nothing_acknowledged(
    spawn: Any, tmp_path: Path
) -> None:
    a, b = await asyncio.gather(spawn(), spawn())
    assert await a.call("acquire", holder="A", ttl=0.5) == {"epoch": 1}
    await a.send("append_until_fenced", start=1, body="A")
    assert await b.call("acquire_when_free", holder="B", ttl=30) == {"epoch": 2}
    assert "offsets" in await b.call("append", count=10, body="B")
    a_reply = await a.reply()
    assert a_reply["error"] == "FencedOut"
    acked = a_reply["acked"]
    assert len(acked) > 10, "A should have appended for the whole lease"
    assert acked == list(range(1, len(acked) + 1))
    records = await bodies(tmp_path)
    assert [offset for offset, _ in records] == list(range(1, len(acked) + 11))
    assert [body for _, body in records] == [b"A"] * len(acked) + [b"B"] * 10


async def test_one_winner_when_processes_race_for_a_free_lease(spawn: Any) -> None:
    children = await asyncio.gather(*(spawn() for _ in range(4)))
    for round_ in range(3):
        replies = await asyncio.gather(
            *(child.call("acquire", holder=f"P{i}", ttl=30) for i, child in enumerate(children))
        )
        winners = [i for i, reply in enumerate(replies) if reply["epoch"] is not None]
        assert len(winners) == 1, replies
        assert replies[winners[0]]["epoch"] == round_ + 1
        assert await children[winners[0]].call("release") == {}


def _lock_files(tmp_path: Path) -> list[str]:
    return sorted(os.listdir(tmp_path / f"shared.db{DIRECTORY_SUFFIX}"))


async def test_a_killed_holder_is_taken_over_before_its_lease_lapses(
    spawn: Any, tmp_path: Path
) -> None:
    a, b = await asyncio.gather(spawn(), spawn())
    assert await a.call("acquire", holder="A", ttl=600) == {"epoch": 1}
    assert await a.call("append", start=1, count=2, body="A") == {"offsets": [1, 2]}
    assert await b.call("acquire", holder="B", ttl=600) == {"epoch": None}, "A runs"

    a.proc.send_signal(signal.SIGSTOP)  # paused, not gone: it keeps its lock
    try:
        assert await b.call("acquire", holder="B", ttl=600) == {"epoch": None}
    finally:
        a.proc.send_signal(signal.SIGCONT)
    assert await a.call("renew", ttl=600) == {"epoch": 1}

    a.proc.kill()
    await a.proc.wait()
    assert await b.call("acquire", holder="B", ttl=600) == {"epoch": 2}
    assert await b.call("append", count=1, body="B") == {"offsets": [3]}
    assert await bodies(tmp_path) == [(1, b"A"), (2, b"A"), (3, b"B")]
    assert len(_lock_files(tmp_path)) == 1, "A's file is removed, B's kept"

    c = await spawn()
    assert await c.call("acquire", holder="C", ttl=600) == {"epoch": None}, "B runs"


async def test_a_holder_that_closed_its_journal_is_taken_over_at_once(
    spawn: Any, tmp_path: Path
) -> None:
    a, b = await asyncio.gather(spawn(), spawn())
    assert await a.call("acquire", holder="A", ttl=600) == {"epoch": 1}
    await a.stop()  # closes its journal without releasing the lease
    assert await b.call("acquire", holder="B", ttl=600) == {"epoch": 2}


async def test_a_standby_killed_leaves_no_lock_file_behind(spawn: Any, tmp_path: Path) -> None:
    a, b = await asyncio.gather(spawn(), spawn())
    assert await b.call("acquire", holder="B", ttl=600) == {"epoch": 1}
    assert await b.call("release") == {}
    assert await a.call("acquire", holder="A", ttl=600) == {"epoch": 2}
    assert await a.call("release") == {}
    assert len(_lock_files(tmp_path)) == 2, "both hold their locks while they run"
    b.proc.kill()
    await b.proc.wait()
    assert await a.call("acquire", holder="A", ttl=600) == {"epoch": 3}
    assert len(_lock_files(tmp_path)) == 1, "taking the lease sweeps B's file away"
