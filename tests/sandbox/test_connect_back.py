"""The connect-back channel: the worker's server, the executor child, and both transports."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
from websockets.asyncio.client import connect

from mawex.sandbox import child
from mawex.sandbox.connect_back import ChildLost, ConnectBackServer, Expectation
from mawex.sandbox.executor_ref import load_executor
from mawex.wire.executor import (
    FRAME_HEADER,
    AckFrame,
    Log,
    Register,
    Reject,
    Result,
    TaskFrame,
    decode_worker_frame,
    encode,
    split_connect_url,
)
from tests.sandbox.executors import HERE


def frame(payload: object = None, executor: str = f"{HERE}:echo", **kw: Any) -> TaskFrame:
    return TaskFrame(
        group="g",
        id="t1",
        attempt=1,
        payload=msgspec.Raw(msgspec.json.encode(payload)),
        executor=executor,
        **kw,
    )


@pytest.fixture
async def server() -> Any:
    async with ConnectBackServer() as server:
        yield server


# -- URLs ----------------------------------------------------------------------------


def test_split_connect_url() -> None:
    assert split_connect_url("ws://127.0.0.1:5/v1/executor?secret=abc") == (
        "ws://127.0.0.1:5/v1/executor",
        "abc",
    )
    assert split_connect_url("wss://h:5/v1/executor?x=1&secret=s") == ("wss://h:5/v1/executor", "s")
    assert split_connect_url("fd://7?secret=s") == ("fd://7", "s")
    for bad in ("ws://h:5/v1/executor", "http://h/?secret=s", "fd://x?secret=s", "nonsense"):
        with pytest.raises(ValueError, match="invalid connect URL"):
            split_connect_url(bad)


async def test_url_for(server: ConnectBackServer) -> None:
    secret = server.new_secret()
    assert len(secret) >= 32 and secret != server.new_secret()
    url = server.url_for(secret)
    assert url.startswith(f"ws://127.0.0.1:{server.port}/v1/executor?secret=")
    assert split_connect_url(url)[1] == secret


async def test_advertised_address() -> None:
    async with ConnectBackServer(advertise="ws://worker.example:7000/") as server:
        assert server.url == "ws://worker.example:7000/v1/executor"


def test_url_before_start() -> None:
    with pytest.raises(RuntimeError, match="not started"):
        ConnectBackServer().url  # noqa: B018


# -- the protocol over a WebSocket --------------------------------------------------------


async def test_register_task_result_ack(server: ConnectBackServer) -> None:
    secret = server.new_secret()
    expectation = server.expect(secret, frame({"x": 1}, timeout_s=5.0))
    base, _ = split_connect_url(expectation.url)
    async with connect(base) as ws:
        await ws.send(encode(Register(secret=secret, pid=1234)), text=True)
        task = decode_worker_frame(await ws.recv())
        assert isinstance(task, TaskFrame)
        assert msgspec.json.decode(task.payload) == {"x": 1} and task.timeout_s == 5.0
        assert await expectation.registered == 1234
        await ws.send(encode(Log(line="halfway")), text=True)
        await ws.send(encode(Result(ok=True, result=msgspec.Raw(b'{"y":2}'))), text=True)
        assert isinstance(decode_worker_frame(await ws.recv()), AckFrame)
    outcome = await expectation
    assert outcome.ok and outcome.result == b'{"y":2}'
    assert server.waiting == 0


async def test_failure_result(server: ConnectBackServer) -> None:
    secret = server.new_secret()
    expectation = server.expect(secret, frame())
    async with connect(split_connect_url(expectation.url)[0]) as ws:
        await ws.send(encode(Register(secret=secret)), text=True)
        await ws.recv()
        await ws.send(encode(Result(ok=False, error="ValueError: nope")), text=True)
        await ws.recv()
    outcome = await expectation
    assert not outcome.ok and outcome.error == "ValueError: nope"


async def reject_reason(server: ConnectBackServer, first: bytes) -> str:
    async with connect(server.url) as ws:
        await ws.send(first, text=True)
        reply = decode_worker_frame(await ws.recv())
    assert isinstance(reply, Reject)
    return reply.reason


async def test_unknown_and_spent_secrets_are_rejected(server: ConnectBackServer) -> None:
    assert "unknown" in await reject_reason(server, encode(Register(secret="guess")))
    secret = server.new_secret()
    expectation = server.expect(secret, frame())
    async with connect(server.url) as ws:
        await ws.send(encode(Register(secret=secret)), text=True)
        await ws.recv()
        # a second registration with the same secret, while the first is connected
        assert "already used" in await reject_reason(server, encode(Register(secret=secret)))
        await ws.send(encode(Result(ok=True)), text=True)
        await ws.recv()
    assert (await expectation).ok
    assert "unknown" in await reject_reason(server, encode(Register(secret=secret)))
    assert "invalid register frame" in await reject_reason(server, b'{"type":"register"}')
    assert "expected a register frame" in await reject_reason(server, encode(Log(line="hi")))
    server.expect("dup", frame())
    with pytest.raises(ValueError, match="in use"):
        server.expect("dup", frame())


async def test_lost_connection_is_child_lost(server: ConnectBackServer) -> None:
    secret = server.new_secret()
    expectation = server.expect(secret, frame())
    async with connect(server.url) as ws:
        await ws.send(encode(Register(secret=secret)), text=True)
        await ws.recv()
    with pytest.raises(ChildLost, match="before a result"):
        await expectation


async def test_protocol_errors_are_child_lost(server: ConnectBackServer) -> None:
    secret = server.new_secret()
    expectation = server.expect(secret, frame())
    async with connect(server.url) as ws:
        await ws.send(encode(Register(secret=secret)), text=True)
        await ws.recv()
        await ws.send(b"{not json", text=True)
        await asyncio.wait_for(ws.wait_closed(), 5)
    with pytest.raises(ChildLost, match="protocol error"):
        await expectation


async def test_cancel_revokes_the_secret_and_closes_the_connection(
    server: ConnectBackServer,
) -> None:
    secret = server.new_secret()
    expectation = server.expect(secret, frame())
    async with connect(server.url) as ws:
        await ws.send(encode(Register(secret=secret)), text=True)
        await ws.recv()
        expectation.cancel()
        await asyncio.wait_for(ws.wait_closed(), 5)
    assert expectation.outcome.cancelled()
    pending = server.expect(server.new_secret(), frame())
    pending.cancel()
    assert "unknown" in await reject_reason(server, encode(Register(secret=pending.secret)))


async def test_log_frames_reach_on_log() -> None:
    lines: list[tuple[str, str]] = []
    async with ConnectBackServer(on_log=lambda s, line: lines.append((s, line))) as server:
        secret = server.new_secret()
        expectation = server.expect(secret, frame())
        async with connect(server.url) as ws:
            await ws.send(encode(Register(secret=secret)), text=True)
            await ws.recv()
            await ws.send(encode(Log(line="progress 50%")), text=True)
            await ws.send(encode(Result(ok=True)), text=True)
            await ws.recv()
        await expectation
    assert lines == [(secret, "progress 50%")]


async def test_close_abandons_waiting_expectations() -> None:
    server = ConnectBackServer()
    await server.start()
    expectation: Expectation = server.expect(server.new_secret(), frame())
    await server.close()
    assert expectation.outcome.cancelled()


# -- the child side ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("executor", "payload", "expected"),
    [
        (f"{HERE}:echo", {"a": [1, 2]}, (True, {"a": [1, 2]})),
        (f"{HERE}:async_whoami", 5, (True, None)),
        (f"{HERE}:raises", None, (False, "ValueError: bad input for t1")),
        (f"{HERE}:system_exit", None, (False, "SystemExit: 7")),
        (f"{HERE}:not_json", None, (False, "result is not JSON-serialisable")),
        ("no_such_module_y:f", None, (False, "cannot load executor 'no_such_module_y:f'")),
    ],
)
def test_execute(executor: str, payload: object, expected: tuple[bool, object]) -> None:
    ok, detail = expected
    result = child.execute(frame(payload, executor=executor))
    assert result.ok is ok
    if ok and detail is not None:
        assert msgspec.json.decode(result.result) == detail
    if not ok:
        assert result.error is not None and result.error.startswith(str(detail))


def test_execute_uses_the_preloaded_executor_and_chdir(tmp_path: Path) -> None:
    executor = load_executor(f"{HERE}:Configured", {"greeting": "hey"})
    task = frame("you", executor=f"{HERE}:Configured", args={"greeting": "hey"})
    before = os.getcwd()
    try:
        result = child.execute(task, executor, chdir=str(tmp_path))
        assert os.getcwd() == str(tmp_path)
    finally:
        os.chdir(before)
    assert msgspec.json.decode(result.result)["built_in"] == executor.target.built_in  # type: ignore[attr-defined]


async def test_run_task_over_a_websocket(server: ConnectBackServer) -> None:
    expectation = server.expect(server.new_secret(), frame({"via": "ws"}))
    code = await asyncio.to_thread(child.run_task, expectation.url)
    assert code == child.EXIT_OK
    assert msgspec.json.decode((await expectation).result) == {"via": "ws"}


async def test_run_task_over_an_inherited_socket() -> None:
    server = ConnectBackServer()  # not started: no listening socket is needed
    secret = server.new_secret()
    expectation = server.expect(secret, frame({"via": "fd"}))
    ours, theirs = socket.socketpair()
    server.attach(ours)
    try:
        url = f"fd://{theirs.fileno()}?secret={secret}"
        code = await asyncio.to_thread(child.run_task, url)
    finally:
        theirs.detach()  # run_task closed it
    assert code == child.EXIT_OK
    assert msgspec.json.decode((await expectation).result) == {"via": "fd"}
    await server.close()


async def test_inherited_socket_frames_are_length_prefixed() -> None:
    server = ConnectBackServer()
    secret = server.new_secret()
    expectation = server.expect(secret, frame("raw"))
    ours, theirs = socket.socketpair()
    server.attach(ours)
    reader, writer = await asyncio.open_connection(sock=theirs)

    async def send(data: bytes) -> None:
        writer.write(FRAME_HEADER.pack(len(data)) + data)
        await writer.drain()

    async def recv() -> Any:
        (size,) = FRAME_HEADER.unpack(await reader.readexactly(FRAME_HEADER.size))
        return decode_worker_frame(await reader.readexactly(size))

    await send(encode(Register(secret=secret)))
    assert isinstance(await recv(), TaskFrame)
    await send(encode(Result(ok=True, result=msgspec.Raw(b'"done"'))))
    assert isinstance(await recv(), AckFrame)
    writer.close()
    assert (await expectation).result == b'"done"'
    await server.close()


async def test_run_task_with_a_refused_secret(server: ConnectBackServer) -> None:
    url = server.url_for("never-expected")
    assert await asyncio.to_thread(child.run_task, url) == child.EXIT_REJECTED


async def test_run_task_that_cannot_connect() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"ws://127.0.0.1:{port}/v1/executor?secret=s"
    assert await asyncio.to_thread(child.run_task, url, open_timeout=2) == child.EXIT_CHANNEL
    assert await asyncio.to_thread(child.run_task, "nonsense") == child.EXIT_CHANNEL


async def test_the_mawex_executor_command(server: ConnectBackServer) -> None:
    """``mawex executor --connect URL`` as the k8s sandbox starts it: a fresh process."""
    results = []
    for executor in (f"{HERE}:echo", f"{HERE}:segfault"):
        expectation = server.expect(server.new_secret(), frame([1, "two"], executor=executor))
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "mawex",
            "executor",
            "--connect",
            expectation.url,
            stderr=subprocess.PIPE,
        )
        _, stderr = await asyncio.wait_for(proc.communicate(), 60)
        results.append((proc.returncode, stderr, expectation))
    (code, _, ok), (crash_code, crash_err, crashed) = results
    assert code == 0 and msgspec.json.decode((await ok).result) == [1, "two"]
    assert crash_code == -11 and b"Segmentation fault" in crash_err
    with pytest.raises(ChildLost):
        await crashed


def test_executor_command_needs_connect() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mawex", "executor"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and "--connect URL is required" in proc.stderr


async def bound_pair(payload: object) -> tuple[ConnectBackServer, Expectation, Any, Any]:
    server = ConnectBackServer()
    secret = server.new_secret()
    expectation = server.expect(secret, frame(payload))
    ours, theirs = socket.socketpair()
    server.attach(ours, expectation)
    reader, writer = await asyncio.open_connection(sock=theirs)
    return server, expectation, reader, writer


async def read_frame(reader: asyncio.StreamReader) -> Any:
    (size,) = FRAME_HEADER.unpack(await reader.readexactly(FRAME_HEADER.size))
    return decode_worker_frame(await reader.readexactly(size))


def write_frame(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(FRAME_HEADER.pack(len(data)) + data)


async def test_bound_socket_sends_the_task_before_register() -> None:
    server, expectation, reader, writer = await bound_pair({"eager": True})
    task = await read_frame(reader)  # nothing sent yet: the task is already there
    assert isinstance(task, TaskFrame) and msgspec.json.decode(task.payload) == {"eager": True}
    write_frame(writer, encode(Register(secret=expectation.secret, pid=42)))
    write_frame(writer, encode(Log(line="working")))
    write_frame(writer, encode(Result(ok=True, result=msgspec.Raw(b"1"))))
    assert isinstance(await read_frame(reader), AckFrame)
    assert await expectation.registered == 42
    assert (await expectation).result == b"1"
    writer.close()
    assert server.waiting == 0
    await server.close()


@pytest.mark.parametrize(
    ("frames", "match"),
    [
        ([encode(Register(secret="wrong"))], "with its secret"),
        ([encode(Log(line="too early"))], "register frame first"),
        ([b"\xff not json"], "invalid frame"),
        ([], "before registering"),
    ],
)
async def test_bound_socket_protocol_errors(frames: list[bytes], match: str) -> None:
    server, expectation, reader, writer = await bound_pair(None)
    await read_frame(reader)
    for data in frames:
        write_frame(writer, data)
    writer.close()
    with pytest.raises(ChildLost, match=match):
        await expectation
    await server.close()


async def test_bound_socket_lost_after_register() -> None:
    server, expectation, reader, writer = await bound_pair(None)
    await read_frame(reader)
    write_frame(writer, encode(Register(secret=expectation.secret)))
    writer.close()
    with pytest.raises(ChildLost, match="before a result"):
        await expectation
    await server.close()
