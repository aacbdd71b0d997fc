"""The worker's WebSocket connection against a raw WebSocket server on loopback: every
frame arrives as sent, whether the short cut or websockets' own parser read it, and
protocol errors close the connection as websockets does."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosedError

from mawex.worker.connection import WorkerConnection

from .ws_frame_bytes import frame

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def text(value: str) -> bytes:
    return frame(0x1, value.encode())


async def _handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    request = await reader.readuntil(b"\r\n\r\n")
    key = next(
        line.split(b":", 1)[1].strip()
        for line in request.split(b"\r\n")
        if line.lower().startswith(b"sec-websocket-key:")
    )
    accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
    writer.write(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )
    await writer.drain()


@contextlib.asynccontextmanager
async def serving(script: Script) -> AsyncIterator[str]:
    """A WebSocket server for one connection that plays ``script`` after the handshake."""
    done = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await _handshake(reader, writer)
            await script(reader, writer)
        finally:
            done.set()
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        await asyncio.wait_for(done.wait(), 10)
    finally:
        server.close()
        await server.wait_closed()


async def _write_apart(writer: asyncio.StreamWriter, *frames: bytes) -> None:
    for data in frames:
        writer.write(data)
        await writer.drain()
        await asyncio.sleep(0.01)  # most likely a read of its own: the short cut's case


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """The first byte and the unmasked payload of the client's next (small) frame."""
    head = await reader.readexactly(2)
    masked = await reader.readexactly(4 + (head[1] & 0x7F))
    mask, data = masked[:4], masked[4:]
    return head[0], bytes(byte ^ mask[i % 4] for i, byte in enumerate(data))


async def _until_closed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer the client's close frame, as a server does, and end."""
    with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
        while True:
            first, payload = await _read_frame(reader)
            if first & 0x0F == 0x8:
                writer.write(frame(0x8, payload))
                await writer.drain()
                return


@pytest.mark.parametrize("connection", [WorkerConnection, ClientConnection])
async def test_every_kind_of_frame_arrives_as_sent(connection: type[ClientConnection]) -> None:
    """The same messages through the short cut's connection and websockets' own (which
    frames the short cut takes: ``tests/unit/test_ws_frames.py``)."""
    pong: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _write_apart(
            writer,
            text("small"),
            text("x" * 300),  # a 16-bit length
            text("é" * 40_000),  # 80,000 bytes: a 64-bit length
            frame(0x2, b"\x00\x01binary"),
            frame(0x1, b"frag", fin=False) + frame(0x0, b"mented"),
            frame(0x9, b"ping!"),
            text("a") + text("b"),  # two frames in one write
            text("last"),
        )
        pong.set_result(await _read_frame(reader))
        await _until_closed(reader, writer)

    async with serving(script) as url:
        async with connect(url, create_connection=connection, max_size=None) as ws:
            received = [await asyncio.wait_for(ws.recv(), 10) for _ in range(8)]
    assert received == [
        "small",
        "x" * 300,
        "é" * 40_000,
        b"\x00\x01binary",
        "fragmented",
        "a",
        "b",
        "last",
    ]
    assert await asyncio.wait_for(pong, 5) == (0x8A, b"ping!")  # answered, as websockets does


async def _outcome(connection: type[ClientConnection], data: bytes) -> tuple[str, object]:
    """What ``recv`` gives after a good frame and then ``data``: a message, or an error
    and the close code the client sent."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _write_apart(writer, text("fine"), data)
        await _until_closed(reader, writer)

    async with serving(script) as url:
        async with connect(url, create_connection=connection, max_size=100) as ws:
            assert await ws.recv() == "fine"
            try:
                return "message", await asyncio.wait_for(ws.recv(), 10)
            except ConnectionClosedError as exc:
                return "closed", exc.sent and exc.sent.code


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (frame(0x1, b"caf\xc3"), ("closed", 1007)),  # not UTF-8
        (text("y" * 200), ("closed", 1009)),  # over max_size (100)
        (frame(0x1, b"z" * 100), ("message", "z" * 100)),  # at max_size
    ],
)
async def test_a_bad_frame_ends_as_with_websockets_own(
    data: bytes, expected: tuple[str, object]
) -> None:
    assert await _outcome(ClientConnection, data) == expected
    assert await _outcome(WorkerConnection, data) == expected


async def test_a_frame_is_offered_only_to_a_waiting_reader_and_never_overtakes() -> None:
    """``on_text`` gets a lone frame while ``recv`` waits with nothing received before
    it; a frame it declines, and a frame arriving while no ``recv`` waits, are received
    as ever, in order."""
    offered: list[bytes] = []
    ready, sent = asyncio.Event(), asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await ready.wait()
        await _write_apart(writer, text("taken"), text("declined"), text("then"))
        sent.set()
        await _until_closed(reader, writer)

    async with serving(script) as url:
        async with connect(url, create_connection=WorkerConnection) as ws:
            assert isinstance(ws, WorkerConnection)
            ws.on_text = lambda data: offered.append(data) or data != b"declined"
            ready.set()  # the frames come once recv() below waits
            assert await asyncio.wait_for(ws.recv(), 10) == "declined"
            await asyncio.wait_for(sent.wait(), 10)  # "then" came while nobody waited
            assert await asyncio.wait_for(ws.recv(), 10) == "then"
    assert offered == [b"taken", b"declined"]


async def test_a_text_frame_written_at_once_arrives_masked_and_whole() -> None:
    got: asyncio.Future[list[tuple[int, bytes]]] = asyncio.get_running_loop().create_future()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got.set_result([await _read_frame(reader) for _ in range(2)])
        await _until_closed(reader, writer)

    async with serving(script) as url:
        async with connect(url, create_connection=WorkerConnection) as ws:
            assert isinstance(ws, WorkerConnection)
            ws.pause_writing()  # a full write buffer: not at once
            assert not ws.write_text(b'"held"')
            ws.resume_writing()
            assert ws.write_text(b'{"type":"heartbeat"}')
            assert ws.write_text("é".encode() * 50)
            frames = await asyncio.wait_for(got, 10)
            ws.protocol.send_close()  # closing: no data frame may follow the close frame
            assert not ws.write_text(b'"closing"')
            ws.send_data()
        assert not ws.write_text(b'"closed"')
    assert frames == [(0x81, b'{"type":"heartbeat"}'), (0x81, "é".encode() * 50)]


async def test_no_frame_is_written_into_a_fragmented_message() -> None:
    got: asyncio.Future[list[tuple[int, bytes]]] = asyncio.get_running_loop().create_future()
    release = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got.set_result([await _read_frame(reader) for _ in range(4)])
        await _until_closed(reader, writer)

    async def parts() -> AsyncIterator[str]:
        yield "frag"
        await release.wait()
        yield "mented"

    async with serving(script) as url:
        async with connect(url, create_connection=WorkerConnection) as ws:
            assert isinstance(ws, WorkerConnection)
            sending = asyncio.create_task(ws.send(parts()))
            await asyncio.sleep(0.05)  # the first fragment is out, the rest to come
            assert not ws.write_text(b'"between"')
            release.set()
            await asyncio.wait_for(sending, 10)
            assert ws.write_text(b'"after"')
            frames = await asyncio.wait_for(got, 10)
    assert frames == [(0x01, b"frag"), (0x00, b"mented"), (0x80, b""), (0x81, b'"after"')]
