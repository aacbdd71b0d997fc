"""The worker side of ``WS /v1/worker`` against a scripted master on a real socket.

Each test plays the master by hand (welcome, assign, ack, cancel, errors, dropped
connections) and asserts the frames the worker sends back.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable
from http import HTTPStatus
from typing import Any

import msgspec
import pytest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from mawex.model import NAME_PATTERN
from mawex.sandbox.local import LocalSandbox
from mawex.wire.worker import (
    BATCH_VERSION,
    PROTOCOL_VERSION,
    Ack,
    Assign,
    AttemptRef,
    Bye,
    Cancel,
    Error,
    Finished,
    Free,
    Heartbeat,
    Hello,
    MasterMessage,
    Welcome,
    WorkerMessage,
    decode_worker_message,
    encode,
    join_frames,
)
from mawex.worker import Worker, build_workers, run_workers, worker_ws_url

DEMO = "mawex.examples.demo"
HEARTBEAT_S = 0.1


class Conn:
    """One worker session, seen from the master's side."""

    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws
        self.heartbeats: list[float] = []
        self.closed = asyncio.Event()

    async def recv(self, timeout: float = 5.0) -> WorkerMessage:
        """The next frame that is not a heartbeat (heartbeats are counted)."""
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.ws.recv()
                assert isinstance(frame, str), "frames must be text"
                message = decode_worker_message(frame)
                if not isinstance(message, Heartbeat):
                    return message
                self.heartbeats.append(time.monotonic())

    async def silence(self, seconds: float) -> None:
        """Assert that nothing but heartbeats arrives for ``seconds``."""
        with contextlib.suppress(TimeoutError):
            message = await self.recv(timeout=seconds)
            pytest.fail(f"unexpected frame {message!r}")

    async def send(self, message: MasterMessage) -> None:
        await self.ws.send(encode(message).decode())

    async def hello(self) -> Hello:
        message = await self.recv()
        assert isinstance(message, Hello)
        return message

    async def check_in(self, epoch: int = 1) -> Hello:
        hello = await self.hello()
        await self.send(Welcome(epoch=epoch, heartbeat_s=HEARTBEAT_S, master_id="test"))
        return hello

    async def drop(self) -> None:
        """Close the connection abruptly, as a crashing master would."""
        assert self.ws.transport is not None
        self.ws.transport.abort()
        await self.ws.wait_closed()


class FakeMaster:
    """A WebSocket server whose sessions the test drives one frame at a time."""

    def __init__(self) -> None:
        self.sessions: asyncio.Queue[Conn] = asyncio.Queue()
        self.headers: list[Headers] = []
        self.reject: Response | None = None
        self.server: Server | None = None
        self.url = ""

    async def __aenter__(self) -> FakeMaster:
        self.server = await serve(self._handler, "127.0.0.1", 0, process_request=self._request)
        port = next(iter(self.server.sockets)).getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    def _request(self, connection: ServerConnection, request: Request) -> Response | None:
        assert request.path == "/v1/worker"
        self.headers.append(request.headers)
        return self.reject

    async def _handler(self, ws: ServerConnection) -> None:
        conn = Conn(ws)
        await self.sessions.put(conn)
        await ws.wait_closed()

    async def accept(self, timeout: float = 5.0) -> Conn:
        return await asyncio.wait_for(self.sessions.get(), timeout)


def assign(id: str, payload: Any, *, attempt: int = 1, timeout_s: float | None = None) -> Assign:
    raw = msgspec.Raw(msgspec.json.encode(payload))
    return Assign(group="g", id=id, attempt=attempt, payload=raw, timeout_s=timeout_s)


def ref(id: str, attempt: int = 1) -> AttemptRef:
    return AttemptRef(group="g", id=id, attempt=attempt)


def ack(id: str, attempt: int = 1) -> Ack:
    return Ack(group="g", id=id, attempt=attempt)


def make_worker(masters: str | list[str], executor: str = "echo", **options: Any) -> Worker:
    options = {
        "group": "g",
        "pod": "p1",
        "backoff_initial": 0.02,
        "backoff_max": 0.1,
        "connect_timeout": 2.0,
        **options,
    }
    return Worker(masters=masters, sandbox=LocalSandbox(f"{DEMO}:{executor}"), **options)


@contextlib.asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``worker`` for the block; make sure it is gone afterwards."""
    task = asyncio.create_task(worker.run())
    try:
        yield task
    finally:
        worker.stop(drain=False)
        await asyncio.wait_for(task, 10)


@pytest.fixture
async def master() -> AsyncIterator[FakeMaster]:
    async with FakeMaster() as server:
        yield server


@pytest.fixture
async def other_master() -> AsyncIterator[FakeMaster]:
    async with FakeMaster() as server:
        yield server


async def test_check_in_run_ack_and_check_out(master: FakeMaster) -> None:
    worker = make_worker(master.url)
    async with running(worker) as task:
        conn = await master.accept()
        hello = await conn.check_in(epoch=7)
        assert hello == Hello(
            worker=worker.id, group="g", pod="p1", sandbox="local", version=PROTOCOL_VERSION
        )
        assert re.match(NAME_PATTERN, worker.id)
        assert worker.id.startswith("p1-g-")
        await asyncio.wait_for(worker.connected.wait(), 2)
        assert worker.epoch == 7

        await conn.send(assign("t1", {"x": [1, "é"]}))
        finished = await conn.recv()
        assert isinstance(finished, Finished)
        assert (finished.id, finished.attempt, finished.ok, finished.busy) == ("t1", 1, True, False)
        assert msgspec.json.decode(finished.result) == {"x": [1, "é"]}
        await conn.send(ack("t1"))

        worker.stop()
        assert await conn.recv() == Bye(handback=None)
        await asyncio.wait_for(task, 5)
        assert not worker.connected.is_set()


async def test_finished_is_resent_until_acked_and_never_after(master: FakeMaster) -> None:
    worker = make_worker(master.url)
    async with running(worker):
        # Given a result the master never acknowledged ...
        conn = await master.accept()
        await conn.check_in()
        await conn.send(assign("t1", "v"))
        first = await conn.recv()
        assert isinstance(first, Finished)
        await conn.drop()

        # ... it is re-sent after every reconnect (hello still names the attempt),
        for _ in range(2):
            conn = await master.accept()
            hello = await conn.check_in()
            assert hello.running == ref("t1")
            assert await conn.recv() == first
            await conn.drop()

        # ... until the ack arrives,
        conn = await master.accept()
        await conn.check_in()
        assert await conn.recv() == first
        await conn.send(ack("t1"))
        await conn.silence(0.5)
        await conn.drop()

        # and then never again.
        conn = await master.accept()
        hello = await conn.check_in()
        assert hello.running is None
        await conn.silence(0.5)
        assert len(conn.heartbeats) >= 2


async def test_hello_names_the_attempt_still_running_after_a_reconnect(
    master: FakeMaster,
) -> None:
    worker = make_worker(master.url, "sleep")
    async with running(worker):
        conn = await master.accept()
        assert (await conn.check_in()).running is None
        await conn.send(assign("t1", {"seconds": 1.0}))
        await asyncio.sleep(0.2)
        await conn.drop()

        conn = await master.accept()
        hello = await conn.check_in(epoch=2)
        assert hello.running == ref("t1")
        assert worker.running == ref("t1")
        finished = await conn.recv()  # the result arrives on the new session
        assert isinstance(finished, Finished)
        assert finished.ok
        assert msgspec.json.decode(finished.result) == {"slept": 1.0}
        await conn.send(ack("t1"))
        await conn.silence(0.3)


async def test_heartbeats_keep_flowing_while_a_sync_task_blocks_its_thread(
    master: FakeMaster,
) -> None:
    worker = make_worker(master.url, "sleep_sync")
    async with running(worker):
        conn = await master.accept()
        await conn.check_in()
        await conn.send(assign("t1", {"seconds": 1.5}))
        started = time.monotonic()
        finished = await conn.recv()
        assert isinstance(finished, Finished)
        assert finished.ok
        beats = [t for t in conn.heartbeats if t >= started]
        assert len(beats) >= 10  # every 0.1 s for 1.5 s
        gaps = [b - a for a, b in zip([started, *beats], beats, strict=False)]
        assert max(gaps) < 0.5


async def test_not_leader_redirects_to_the_hinted_master(
    master: FakeMaster, other_master: FakeMaster
) -> None:
    worker = make_worker(master.url)
    async with running(worker):
        standby = await master.accept()
        await standby.hello()
        await standby.send(Error(error="not_leader", detail="standby", leader=other_master.url))

        leader = await other_master.accept()
        await leader.check_in()
        await asyncio.wait_for(worker.connected.wait(), 2)
        assert worker.master == worker_ws_url(other_master.url)
        await leader.send(assign("t1", 1))
        assert isinstance(await leader.recv(), Finished)


async def test_not_leader_at_the_handshake_redirects_too(
    master: FakeMaster, other_master: FakeMaster
) -> None:
    body = msgspec.json.encode({"error": "not_leader", "leader": other_master.url}).decode()
    master.reject = Response(
        HTTPStatus.SERVICE_UNAVAILABLE, "Service Unavailable", Headers(), body.encode()
    )
    worker = make_worker(master.url)
    async with running(worker):
        leader = await other_master.accept()
        await leader.check_in()
        await asyncio.wait_for(worker.connected.wait(), 2)


async def test_a_deposed_leader_sends_the_worker_to_its_successor(
    master: FakeMaster, other_master: FakeMaster
) -> None:
    worker = make_worker([master.url, other_master.url])
    async with running(worker):
        conn = await master.accept()
        await conn.check_in()
        await conn.send(Error(error="not_leader", leader=other_master.url))
        successor = await other_master.accept()
        await successor.check_in(epoch=2)
        await asyncio.wait_for(worker.connected.wait(), 2)
        assert worker.epoch == 2


async def test_unreachable_master_is_skipped(master: FakeMaster) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    worker = make_worker(f"{dead},{master.url}")
    async with running(worker):
        conn = await master.accept()
        await conn.check_in()
        await asyncio.wait_for(worker.connected.wait(), 2)


async def test_backs_off_while_masters_refuse_and_recovers(master: FakeMaster) -> None:
    master.reject = Response(HTTPStatus.INTERNAL_SERVER_ERROR, "Internal Server Error", Headers())
    worker = make_worker(master.url, backoff_initial=0.05, backoff_max=0.2)
    async with running(worker):
        await asyncio.sleep(1.0)
        assert not worker.connected.is_set()
        # 0.05 + 0.1 + 0.2 + 0.2 ... (halved at worst by jitter): a handful, not a hot loop
        assert 3 <= len(master.headers) <= 25
        master.reject = None
        await (await master.accept()).check_in()
        await asyncio.wait_for(worker.connected.wait(), 2)


async def test_stop_while_no_master_answers_returns_promptly() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    worker = make_worker(dead, backoff_max=5)
    task = asyncio.create_task(worker.run())
    await asyncio.sleep(0.3)
    worker.stop()
    await asyncio.wait_for(task, 2)
    assert worker.state == "stopped"


async def test_cancel_stops_the_matching_attempt(master: FakeMaster) -> None:
    worker = make_worker(master.url, "sleep")
    async with running(worker):
        conn = await master.accept()
        await conn.check_in()
        await conn.send(assign("t1", {"seconds": 30}, attempt=2))
        await asyncio.sleep(0.1)
        await conn.send(Cancel(group="g", id="t1", attempt=1, reason="stale"))  # not this one
        await conn.send(Cancel(group="g", id="t1", attempt=2, reason="cancelled by client"))
        finished = await conn.recv()
        assert isinstance(finished, Finished)
        assert (finished.attempt, finished.ok) == (2, False)
        assert finished.error == "cancelled: cancelled by client"
        assert not finished.busy


@pytest.mark.parametrize(
    ("task_timeout", "worker_timeout"),
    [(0.2, None), (None, 0.2), (30.0, 0.2)],
)
async def test_timed_out_sync_code_keeps_the_pod_busy_until_free(
    master: FakeMaster, task_timeout: float | None, worker_timeout: float | None
) -> None:
    worker = make_worker(master.url, "sleep_sync", task_timeout=worker_timeout)
    async with running(worker):
        conn = await master.accept()
        await conn.check_in()
        await conn.send(assign("t1", {"seconds": 0.8}, timeout_s=task_timeout))
        started = time.monotonic()
        finished = await conn.recv()
        assert isinstance(finished, Finished)
        assert (finished.ok, finished.busy) == (False, True)
        assert finished.error == "timed out after 0.2s"
        assert time.monotonic() - started < 0.6
        await conn.send(ack("t1"))
        assert await conn.recv() == Free(group="g", id="t1", attempt=1)
        assert time.monotonic() - started >= 0.7


async def test_hello_names_lingering_code_and_free_follows_on_the_new_session(
    master: FakeMaster,
) -> None:
    worker = make_worker(master.url, "sleep_sync", task_timeout=0.1)
    async with running(worker):
        conn = await master.accept()
        await conn.check_in()
        await conn.send(assign("t1", {"seconds": 1.0}))
        finished = await conn.recv()
        assert isinstance(finished, Finished)
        assert finished.busy
        await conn.send(ack("t1"))
        await conn.drop()

        conn = await master.accept()
        hello = await conn.check_in()
        assert hello.running == ref("t1")  # the pod is still busy with it
        assert await conn.recv(timeout=3) == Free(group="g", id="t1", attempt=1)


async def test_stop_drains_the_running_attempt(master: FakeMaster) -> None:
    worker = make_worker(master.url, "sleep", drain_timeout=5)
    async with running(worker) as task:
        conn = await master.accept()
        await conn.check_in()
        await conn.send(assign("t1", {"seconds": 0.3}))
        await asyncio.sleep(0.05)
        worker.stop()
        finished = await conn.recv()
        assert isinstance(finished, Finished)
        assert finished.ok
        await conn.send(ack("t1"))
        assert await conn.recv() == Bye(handback=None)
        await asyncio.wait_for(task, 5)


async def test_stop_hands_back_what_does_not_finish_in_time(master: FakeMaster) -> None:
    worker = make_worker(master.url, "sleep", drain_timeout=0.2)
    async with running(worker) as task:
        conn = await master.accept()
        await conn.check_in()
        await conn.send(assign("t1", {"seconds": 30}))
        await asyncio.sleep(0.05)
        worker.stop()
        assert await conn.recv() == Bye(handback=ref("t1"))
        await asyncio.wait_for(task, 5)
        assert worker.running is None
        assert worker.state == "stopped"


async def test_work_assigned_while_stopping_is_handed_back(master: FakeMaster) -> None:
    worker = make_worker(master.url, "sleep", drain_timeout=5, ack_timeout=5)
    async with running(worker) as task:
        conn = await master.accept()
        await conn.check_in()
        await conn.send(assign("t1", {"seconds": 0.1}))
        await asyncio.sleep(0.02)
        worker.stop()
        # The worker drains t1 and waits for its ack; the master assigns more work instead.
        assert isinstance(await conn.recv(), Finished)
        await conn.send(assign("t2", {"seconds": 0.1}))
        assert await conn.recv() == Bye(handback=ref("t2"))
        await asyncio.wait_for(task, 5)


async def test_token_goes_in_the_authorization_header(master: FakeMaster) -> None:
    worker = make_worker(master.url, token="s3cret")
    async with running(worker):
        await (await master.accept()).check_in()
    assert master.headers[0]["Authorization"] == "Bearer s3cret"


async def test_busy_worker_refuses_a_second_assignment(master: FakeMaster) -> None:
    worker = make_worker(master.url, "sleep")
    async with running(worker):
        conn = await master.accept()
        await conn.check_in()
        await conn.send(assign("t1", {"seconds": 0.5}))
        await conn.send(assign("t1", {"seconds": 0.5}))  # a repeat: ignored
        await conn.send(assign("t2", {"seconds": 0.5}))  # a second task: refused
        refused = await conn.recv()
        assert isinstance(refused, Finished)
        assert (refused.id, refused.ok) == ("t2", False)
        assert refused.error is not None
        assert "is busy with g/t1#1" in refused.error
        done = await conn.recv()
        assert isinstance(done, Finished)
        assert (done.id, done.ok) == ("t1", True)


async def test_a_pool_runs_one_worker_per_group_in_one_pod(master: FakeMaster) -> None:
    pool = build_workers(
        f"{DEMO}:echo", masters=master.url, groups="a,b", pod="pod-1", backoff_initial=0.02
    )
    task = asyncio.create_task(pool.run())
    try:
        hellos = [await (await master.accept()).check_in() for _ in range(2)]
        assert sorted(h.group for h in hellos) == ["a", "b"]
        assert {h.pod for h in hellos} == {"pod-1"}
        assert len({h.worker for h in hellos}) == 2
        await asyncio.wait_for(pool.wait_connected(), 2)
    finally:
        pool.stop()
        await asyncio.wait_for(task, 10)


async def test_a_pool_fails_fast_on_a_bad_executor(master: FakeMaster) -> None:
    pool = build_workers(f"{DEMO}:missing", masters=master.url, groups="a", pod="p")
    with pytest.raises(Exception, match="has no attribute 'missing'"):
        await asyncio.wait_for(pool.run(), 5)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://h:1", "ws://h:1/v1/worker"),
        ("https://h:1/", "wss://h:1/v1/worker"),
        ("h:1", "ws://h:1/v1/worker"),
        ("http://h:1/prefix", "ws://h:1/prefix/v1/worker"),
        ("ws://h:1/v1/worker", "ws://h:1/v1/worker"),
        ("unix:/run/m.sock", "ws+unix://%2Frun%2Fm.sock/v1/worker"),
        ("http+unix://%2Frun%2Fm.sock/", "ws+unix://%2Frun%2Fm.sock/v1/worker"),
    ],
)
def test_worker_ws_url(given: str, expected: str) -> None:
    assert worker_ws_url(given) == expected


async def test_run_workers_stops_on_sigint(master: FakeMaster) -> None:
    before = signal.getsignal(signal.SIGINT)
    task = asyncio.create_task(
        run_workers(f"{DEMO}:echo", masters=master.url, groups="g", pod="p", backoff_initial=0.02)
    )
    conn = await master.accept()
    await conn.check_in()
    os.kill(os.getpid(), signal.SIGINT)
    assert await conn.recv() == Bye(handback=None)
    await asyncio.wait_for(task, 5)
    assert signal.getsignal(signal.SIGINT) is before


async def test_an_oversized_result_fails_the_attempt(master: FakeMaster) -> None:
    worker = make_worker(master.url, max_result_bytes=100)
    async with running(worker):
        conn = await master.accept()
        await conn.check_in()
        await conn.send(assign("t1", "x" * 200))
        finished = await conn.recv()
        assert isinstance(finished, Finished)
        assert not finished.ok
        assert finished.error == "result of 202 bytes is over the limit of 100 bytes"


async def test_an_array_frame_is_handled_message_by_message(master: FakeMaster) -> None:
    worker = make_worker(master.url)
    async with running(worker):
        conn = await master.accept()
        hello = await conn.check_in()
        assert hello.version >= BATCH_VERSION  # the worker takes array frames
        await conn.send(assign("t1", 1))
        first = await conn.recv()
        assert isinstance(first, Finished) and first.id == "t1"
        # the ack of t1 and the assign of t2 in one frame, as a master sends them
        await conn.ws.send(join_frames([encode(ack("t1")), encode(assign("t2", 2))]).decode())
        second = await conn.recv()
        assert isinstance(second, Finished) and second.id == "t2"
        assert msgspec.json.decode(second.result) == 2
        await conn.send(ack("t2"))
        await conn.drop()
        # both results were acked (t1's inside the array frame): nothing is re-sent
        conn = await master.accept()
        assert (await conn.check_in()).running is None
        await conn.silence(0.3)


async def test_each_assignment_alone_in_its_read_is_handled_as_ever(master: FakeMaster) -> None:
    """Frames read while the worker waits for one are handled as they arrive (without
    waking its session's loop) when they only start an attempt or ack results;
    everything else still gets its answer: a repeat is ignored, a busy worker or
    another group's task refused, an unacked result repeated, two assignments in
    one frame taken one by one."""
    worker = make_worker(master.url, "sleep")
    async with running(worker):
        conn = await master.accept()
        await conn.check_in()
        await asyncio.wait_for(worker.connected.wait(), 5)  # waiting for frames now
        other = Assign(group="other", id="o1", attempt=1, payload=msgspec.Raw(b"{}"))
        await send_apart(conn, other)
        refused = await conn.recv()
        assert isinstance(refused, Finished) and not refused.ok and refused.id == "o1"
        assert refused.error is not None and "serves group g, not other" in refused.error

        await send_apart(conn, assign("t1", {"seconds": 0.3}))
        await wait_for_state(lambda: worker.running == ref("t1"))
        await send_apart(conn, assign("t1", {"seconds": 0.3}))  # a repeat: ignored
        await send_apart(conn, assign("t2", {"seconds": 0.3}))  # refused: busy
        refused = await conn.recv()
        assert isinstance(refused, Finished) and (refused.id, refused.ok) == ("t2", False)
        assert refused.error is not None and "is busy with g/t1#1" in refused.error
        done = await conn.recv()
        assert isinstance(done, Finished) and (done.id, done.ok) == ("t1", True)

        await wait_for_state(lambda: worker.running is None)
        # t1 is not acked: its result again, at once (a second run would take 5 s)
        await send_apart(conn, assign("t1", {"seconds": 5}))
        assert await conn.recv(timeout=2) == done
        await send_apart(conn, ack("t1"))
        await send_apart(conn, ack("t2"))

        both = [encode(assign("t3", {"seconds": 0.1})), encode(assign("t4", {"seconds": 0.1}))]
        await conn.ws.send(join_frames(both).decode())
        refused, done = await conn.recv(), await conn.recv()
        assert isinstance(refused, Finished) and (refused.id, refused.ok) == ("t4", False)
        assert refused.error is not None and "is busy with g/t3#1" in refused.error
        assert isinstance(done, Finished) and (done.id, done.ok) == ("t3", True)


async def test_a_pod_whose_timed_out_code_still_runs_repeats_its_result(
    master: FakeMaster,
) -> None:
    """An assignment of the attempt whose code still runs, alone in its read, gets
    that attempt's result again, not a second run."""
    worker = make_worker(master.url, "sleep_sync", task_timeout=0.1)
    async with running(worker):
        conn = await master.accept()
        await conn.check_in()
        await asyncio.wait_for(worker.connected.wait(), 5)
        await send_apart(conn, assign("t1", {"seconds": 0.8}))
        finished = await conn.recv()
        assert isinstance(finished, Finished) and finished.busy
        await send_apart(conn, ack("t1"))
        await wait_for_state(lambda: worker.running is None)
        await send_apart(conn, assign("t1", {"seconds": 0.01}))  # a run would succeed
        assert await conn.recv() == finished
        assert await conn.recv() == Free(group="g", id="t1", attempt=1)


async def send_apart(conn: Conn, message: MasterMessage) -> None:
    """Send ``message`` and let the worker read it before anything else: most likely
    a read of its own, the case the worker handles without waking its loop."""
    await conn.send(message)
    await asyncio.sleep(0.02)


async def wait_for_state(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Until ``condition()`` holds (the worker runs in this event loop)."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


async def test_a_frame_waits_behind_a_send_under_way(master: FakeMaster) -> None:
    """A frame written at once never overtakes one whose ``send()`` holds the lock."""
    worker = make_worker(master.url)
    async with running(worker):
        conn = await master.accept()
        await conn.check_in()
        await asyncio.wait_for(worker.connected.wait(), 5)
        free = Free(group="g", id="x", attempt=1)
        async with worker._send_lock:  # as a send() waiting for the socket to drain
            sending = asyncio.create_task(worker._send(free))
            await conn.silence(0.2)
        assert await conn.recv() == free
        assert await sending
