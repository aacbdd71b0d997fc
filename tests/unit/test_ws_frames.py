"""Which reads the short cut through websockets' parser takes: exactly one final text
frame of UTF-8 within the size limit, masked from a client, on an open connection
whose parser is between frames; everything else is left to websockets."""

from __future__ import annotations

import pytest
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol, State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from mawex.wire.ws_frames import client_text_frame, lone_text_frame, server_text_frame

from .ws_frame_bytes import frame


def open_protocol(side: str, max_size: int | None = 1000) -> Protocol:
    """A protocol of ``side`` past its handshake (its parser reads frames)."""
    if side == "server":
        return ServerProtocol(state=State.OPEN, max_size=max_size)
    return ClientProtocol(parse_uri("ws://127.0.0.1/"), state=State.OPEN, max_size=max_size)


SIDES = [("server", True), ("client", False)]  # a server reads masked frames, a client not


@pytest.mark.parametrize(("side", "masked"), SIDES)
def test_a_lone_text_frame_is_taken(side: str, masked: bool) -> None:
    protocol = open_protocol(side)
    for text in ("hello", "é" * 200, "x" * 1000):
        assert lone_text_frame(frame(0x1, text.encode(), masked=masked), protocol) == (
            text.encode()
        )
    assert protocol.events_received() == []  # websockets' parser saw nothing


@pytest.mark.parametrize(("side", "masked"), SIDES)
def test_anything_else_is_left_to_websockets(side: str, masked: bool) -> None:
    protocol = open_protocol(side)
    left = [
        frame(0x1, b"hello", fin=False, masked=masked),  # the first of a fragmented message
        frame(0x0, b"hello", masked=masked),  # a continuation
        frame(0x2, b"hello", masked=masked),  # binary
        frame(0x9, b"ping", masked=masked),  # control
        frame(0x1, b"hello", masked=not masked),  # masked the wrong way for this side
        frame(0x1, b"one", masked=masked) + frame(0x1, b"two", masked=masked),  # two frames
        frame(0x1, b"cut short", masked=masked)[:-1],  # part of one
        frame(0x1, b"\xff\xfe", masked=masked),  # not UTF-8
        frame(0x1, b"z" * 1001, masked=masked),  # over max_size
        frame(0x1, b"w" * 70_000, masked=masked),  # a 64-bit length
        b"\x81",  # a byte
        b"",
    ]
    for data in left:
        assert lone_text_frame(data, protocol) is None, data[:12]


@pytest.mark.parametrize(("side", "masked"), SIDES)
def test_only_between_frames_of_an_open_connection(side: str, masked: bool) -> None:
    data = frame(0x1, b"after", masked=masked)
    protocol = open_protocol(side)
    protocol.receive_data(frame(0x1, b"begun", masked=masked)[:3])  # a frame begun earlier
    assert lone_text_frame(data, protocol) is None
    fragmented = open_protocol(side)
    fragmented.receive_data(frame(0x1, b"first part", fin=False, masked=masked))
    assert lone_text_frame(data, fragmented) is None  # inside a fragmented message
    for state in (State.CONNECTING, State.CLOSING, State.CLOSED):
        other = open_protocol(side)
        other.state = state
        assert lone_text_frame(data, other) is None
    unlimited = open_protocol(side, max_size=None)
    assert lone_text_frame(frame(0x1, b"u" * 5000, masked=masked), unlimited) == b"u" * 5000


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65_535, 65_536, 70_000])
def test_a_server_text_frame_is_what_websockets_writes_and_reads(size: int) -> None:
    payload = ("é" * size).encode()[:size]
    payload = payload.decode(errors="ignore").encode()  # whole characters only
    data = server_text_frame(payload)
    assert data == Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[])
    client = open_protocol("client", max_size=None)
    client.receive_data(data)
    [received] = client.events_received()
    assert isinstance(received, Frame)
    assert (received.opcode, received.fin, received.data) == (Opcode.TEXT, True, payload)


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65_535, 65_536])
def test_a_client_text_frame_is_masked_and_read_back_by_a_server(size: int) -> None:
    payload = b"m" * size
    first, second = client_text_frame(payload), client_text_frame(payload)
    assert first[1] & 0x80 and second[1] & 0x80  # masked, as a client must
    if size:
        assert first != second  # a fresh key each time
    server = open_protocol("server", max_size=None)
    server.receive_data(first + second)
    frames = server.events_received()
    assert [(f.opcode, f.fin, f.data) for f in frames if isinstance(f, Frame)] == [
        (Opcode.TEXT, True, payload),
        (Opcode.TEXT, True, payload),
    ]
