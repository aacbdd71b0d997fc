"""The master's HTTP protocol writes each fixed-length response once, and nothing else
waits: uvicorn's own protocol and request cycle, on a transport that records writes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvicorn
from uvicorn.server import ServerState

from mawex.server.http_protocol import guarded_http_protocol
from mawex.server.limits import NetLimits

from .recording_transport import RecordingTransport

App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


def _protocol(app: App) -> Any:
    """The master's HTTP protocol for one connection to ``app``, not connected yet."""
    config = uvicorn.Config(app, http=guarded_http_protocol(NetLimits()), lifespan="off")
    config.load()
    return config.http_protocol_class(  # type: ignore[call-arg]
        config=config, server_state=ServerState(), app_state={}
    )


async def _serve(app: App, *requests: bytes) -> RecordingTransport:
    """Feed ``requests`` to one connection and let the app answer them."""
    protocol = _protocol(app)
    transport = RecordingTransport()
    protocol.connection_made(transport)
    for request in requests:
        protocol.data_received(request)
        await asyncio.sleep(0)
    while protocol.tasks:
        await asyncio.gather(*protocol.tasks, return_exceptions=True)
    protocol.connection_lost(None)
    return transport


def _answering(*messages: dict[str, Any], read_body: bool = False, fail: bool = False) -> App:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if read_body:
            await receive()
        for message in messages:
            await send(message)
        if fail:
            raise RuntimeError("the app failed after starting its response")

    return app


def _start(*headers: tuple[bytes, bytes]) -> dict[str, Any]:
    return {"type": "http.response.start", "status": 200, "headers": list(headers)}


def _body(data: bytes, more: bool = False) -> dict[str, Any]:
    return {"type": "http.response.body", "body": data, "more_body": more}


GET = b"GET /x HTTP/1.1\r\nhost: x\r\n\r\n"
LENGTH_5 = (b"content-length", b"5")


def test_a_fixed_length_response_is_one_write() -> None:
    writes = asyncio.run(_serve(_answering(_start(LENGTH_5), _body(b"hello")), GET)).writes
    assert len(writes) == 1
    assert writes[0].startswith(b"HTTP/1.1 200 OK\r\n") and writes[0].endswith(b"\r\n\r\nhello")


def test_keep_alive_requests_are_one_write_each() -> None:
    app = _answering(_start(LENGTH_5), _body(b"hello"))
    writes = asyncio.run(_serve(app, GET, GET, GET)).writes
    assert len(writes) == 3 and all(w.endswith(b"\r\n\r\nhello") for w in writes)


def test_a_body_in_parts_goes_head_and_first_part_then_the_rest() -> None:
    length = (b"content-length", b"10")
    app = _answering(_start(length), _body(b"hello", more=True), _body(b"world"))
    writes = asyncio.run(_serve(app, GET)).writes
    assert len(writes) == 2
    assert writes[0].endswith(b"\r\n\r\nhello") and writes[1] == b"world"


def test_the_head_of_a_head_request_is_not_held() -> None:
    head = b"HEAD /x HTTP/1.1\r\nhost: x\r\n\r\n"
    writes = asyncio.run(_serve(_answering(_start(LENGTH_5), _body(b"")), head)).writes
    assert len(writes) == 1 and writes[0].endswith(b"content-length: 5\r\n\r\n")


def test_a_chunked_response_sends_its_head_at_once() -> None:
    app = _answering(_start(), _body(b"hello", more=True), _body(b""))
    writes = asyncio.run(_serve(app, GET)).writes
    assert writes[0].endswith(b"transfer-encoding: chunked\r\n\r\n")
    assert b"".join(writes[1:]) == b"5\r\nhello\r\n0\r\n\r\n"


def test_100_continue_goes_at_once_and_the_response_in_one_write() -> None:
    post = b"POST /x HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\nexpect: 100-continue\r\n\r\n"

    async def scenario() -> RecordingTransport:
        protocol = _protocol(_answering(_start(LENGTH_5), _body(b"hello"), read_body=True))
        transport = RecordingTransport()
        protocol.connection_made(transport)
        protocol.data_received(post)
        for _ in range(5):  # the app asks for the body: the server invites it
            await asyncio.sleep(0)
        assert transport.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
        protocol.data_received(b"{}")
        await asyncio.gather(*protocol.tasks)
        protocol.connection_lost(None)
        return transport

    writes = asyncio.run(scenario()).writes
    assert len(writes) == 2 and writes[1].endswith(b"\r\n\r\nhello")


def test_a_held_head_goes_out_before_the_connection_closes() -> None:
    app = _answering(_start(LENGTH_5), fail=True)
    transport = asyncio.run(_serve(app, GET))
    assert transport.closed
    assert len(transport.writes) == 1 and transport.writes[0].startswith(b"HTTP/1.1 200 OK")


@pytest.mark.parametrize("second", [GET, GET[:10]])
def test_only_a_request_still_arriving_after_a_read_has_a_deadline(second: bytes) -> None:
    """The usual request, whole in one read, costs no timer; one still arriving does."""

    async def scenario() -> tuple[int, bool]:
        loop = asyncio.get_running_loop()
        protocol = _protocol(_answering(_start(LENGTH_5), _body(b"hello")))
        armed = 0
        call_later = loop.call_later

        def counting_call_later(delay: float, callback: Any, *args: Any) -> asyncio.TimerHandle:
            nonlocal armed
            armed += callback == protocol._deadline_passed
            return call_later(delay, callback, *args)

        loop.call_later = counting_call_later  # type: ignore[method-assign]
        try:
            protocol.connection_made(RecordingTransport())  # the first head's deadline
            protocol.data_received(GET)
            await asyncio.gather(*protocol.tasks)
            protocol.data_received(second)
            pending = protocol._deadline is not None
            await asyncio.gather(*protocol.tasks)
            protocol.connection_lost(None)
        finally:
            del loop.call_later
        return armed, pending

    assert asyncio.run(scenario()) == ((1, False) if second == GET else (2, True))
