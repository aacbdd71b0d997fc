"""Hypothesis fuzzing of the sandbox connect-back protocol from a fake executor.

Over a real WebSocket (``ws://``) and over an inherited stream socket (``fd://``):
random, truncated, reordered, duplicated and oversized frames after a register
with the right secret, a wrong one, or none. What must hold: without the right
secret nothing but a ``reject`` comes back (never the task); with it the task
comes first; the attempt's outcome is the first valid ``result`` if one arrives
before anything invalid, and :class:`ChildLost` otherwise; nothing hangs.
"""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from mawex.sandbox.base import Outcome
from mawex.sandbox.connect_back import ChildLost, ConnectBackServer
from mawex.wire import executor as xwire

pytestmark = pytest.mark.timeout(180)

MAX_FRAME = 4096
TASK = xwire.TaskFrame(
    group="g", id="t", attempt=1, payload=msgspec.Raw(b'{"p":1}'), executor="m:f"
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
frame = st.one_of(
    st.builds(lambda line: ("log", {"type": "log", "line": line}), st.text(max_size=30)),
    st.builds(lambda v: ("result", {"type": "result", "ok": True, "result": v}), json_values),
    st.builds(
        lambda e: ("result", {"type": "result", "ok": False, "error": e}), st.text(max_size=30)
    ),
    st.just(("bad", {"type": "register", "secret": "again"})),
    st.builds(lambda v: ("bad", v), json_values),
    st.builds(lambda t: ("bad", {"type": t}), st.sampled_from(["task", "ack", "exec", "x"])),
    st.builds(lambda n: ("bad", {"type": "result", "ok": True, "extra": n}), st.integers()),
    st.builds(lambda raw: ("raw", raw), st.binary(max_size=40)),
    st.just(("oversized", None)),
)
register = st.sampled_from(["right", "wrong", "none", "truncated"])


def _encode(kind: str, body: Any) -> bytes:
    if kind == "raw":
        return bytes(body) if body else b"\x00"
    if kind == "oversized":
        return json.dumps({"type": "log", "line": "o" * MAX_FRAME}).encode()
    return json.dumps(body).encode()


def _expected(steps: list[tuple[str, Any]]) -> Outcome | None:
    """The outcome the worker side must report: the first valid result, or None (lost)."""
    for kind, body in steps:
        if kind == "log":
            continue
        if kind == "result":
            if body["ok"]:
                return Outcome.success(json.dumps(body["result"]).encode())
            return Outcome.failure(body["error"] or "x")
        if kind == "raw":
            try:
                xwire.decode_executor_frame(_encode(kind, body))
            except (msgspec.DecodeError, msgspec.ValidationError):
                return None
            continue  # random bytes that happen to be a valid log/result: rare, skip
        return None
    return None


def _register_frame(how: str, secret: str) -> bytes:
    if how == "right":
        return xwire.encode(xwire.Register(secret=secret, pid=1))
    if how == "wrong":
        return xwire.encode(xwire.Register(secret=secret[::-1] + "x"))
    if how == "truncated":
        return xwire.encode(xwire.Register(secret=secret))[:-3]
    return b'{"type":"log","line":"hi"}'


def _check(how: str, steps: list[tuple[str, Any]], got: list[Any], outcome: Any) -> None:
    types = [type(f).__name__ for f in got]
    if how != "right":
        assert "TaskFrame" not in types, types
        assert types in ([], ["Reject"]), types
        assert outcome == "pending", outcome
        return
    if not types:  # the connection broke (e.g. a frame over the limit) before the task went
        assert isinstance(outcome, ChildLost), (outcome, steps)
        return
    assert types[:1] == ["TaskFrame"], types
    want = _expected(steps)
    if want is None:
        assert isinstance(outcome, ChildLost) or (
            isinstance(outcome, Outcome) and _first_valid_result(steps)
        ), (outcome, steps)
    else:
        assert isinstance(outcome, Outcome), (outcome, steps)
        assert outcome.ok == want.ok
        if want.ok:
            assert json.loads(outcome.result) == json.loads(want.result)


def _first_valid_result(steps: list[tuple[str, Any]]) -> bool:
    return any(kind == "result" for kind, _ in steps)


async def _outcome(expectation: Any) -> Any:
    try:
        return await asyncio.wait_for(asyncio.shield(expectation.outcome), 3)
    except TimeoutError:
        return "pending"
    except ChildLost as lost:
        return lost


async def _over_websocket(how: str, steps: list[tuple[str, Any]]) -> None:
    async with ConnectBackServer(max_frame=MAX_FRAME, register_timeout=1.0) as server:
        secret = server.new_secret()
        expectation = server.expect(secret, TASK)
        base, _ = xwire.split_connect_url(expectation.url)
        got: list[Any] = []
        async with connect(base, max_size=None, close_timeout=1) as ws:
            try:
                await ws.send(_register_frame(how, secret).decode(errors="replace"))
                for kind, body in steps:
                    data = _encode(kind, body)
                    await (ws.send(data) if kind == "raw" else ws.send(data.decode()))
                while True:
                    reply = await asyncio.wait_for(ws.recv(), 1.0)
                    got.append(xwire.decode_worker_frame(reply))
            except (ConnectionClosed, TimeoutError):
                pass
        outcome = await _outcome(expectation) if how == "right" else "pending"
        if how != "right":
            assert not expectation.done
        _check(how, steps, got, outcome)
        expectation.cancel()


async def _over_bound_socket(how: str, steps: list[tuple[str, Any]]) -> None:
    """fd:// bound to its attempt: the task is written at once (only the process the
    worker started holds the socket), so the secret decides only whose result counts."""
    server = ConnectBackServer(max_frame=MAX_FRAME)
    secret = server.new_secret()
    expectation = server.expect(secret, TASK)
    ours, theirs = socket.socketpair()
    server.attach(ours, expectation)
    _, writer = await asyncio.open_connection(sock=theirs)
    try:
        for data in [_register_frame(how, secret), *(_encode(k, b) for k, b in steps)]:
            writer.write(xwire.FRAME_HEADER.pack(len(data)) + data)
        await writer.drain()
        writer.write_eof()
    except OSError:
        pass
    outcome = await _outcome(expectation)
    writer.close()
    await server.close()
    assert outcome != "pending", "the attempt hung"
    if how != "right":
        assert isinstance(outcome, ChildLost), outcome
    else:
        want = _expected(steps)
        if want is not None:
            assert isinstance(outcome, Outcome) and outcome.ok == want.ok
        else:
            assert isinstance(outcome, ChildLost) or _first_valid_result(steps)


SETTINGS = settings(
    max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)


@SETTINGS
@given(how=register, steps=st.lists(frame, max_size=6))
def test_fuzz_connect_back_websocket(how: str, steps: list[tuple[str, Any]]) -> None:
    asyncio.run(_over_websocket(how, steps))


@SETTINGS
@given(how=register, steps=st.lists(frame, max_size=6))
def test_fuzz_connect_back_bound_socket(how: str, steps: list[tuple[str, Any]]) -> None:
    asyncio.run(_over_bound_socket(how, steps))


async def _replay_after_use() -> None:
    async with ConnectBackServer() as server:
        secret = server.new_secret()
        expectation = server.expect(secret, TASK)
        base, _ = xwire.split_connect_url(expectation.url)
        for attempt in range(3):  # the first registers and reports; replays get a reject
            async with connect(base) as ws:
                await ws.send(xwire.encode(xwire.Register(secret=secret)).decode())
                first = xwire.decode_worker_frame(await asyncio.wait_for(ws.recv(), 5))
                if attempt == 0:
                    assert isinstance(first, xwire.TaskFrame)
                    await ws.send(xwire.encode(xwire.Result(ok=True, result=msgspec.Raw(b"2"))))
                    assert isinstance(
                        xwire.decode_worker_frame(await asyncio.wait_for(ws.recv(), 5)),
                        xwire.AckFrame,
                    )
                else:
                    assert isinstance(first, xwire.Reject)
        assert (await expectation).result == b"2"


def test_replayed_secret_gets_nothing() -> None:
    asyncio.run(_replay_after_use())
