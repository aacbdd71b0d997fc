"""The master's WebSocket protocol reads and writes the usual frame directly, and in
order: uvicorn's own protocol and a real worker session, talking to websockets'
client protocol over a transport that records writes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn
from starlette.websockets import WebSocket
from uvicorn.server import ServerState
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.uri import parse_uri

from mawex.server.worker_ws import SessionState, WorkerSession
from mawex.server.ws_protocol import DIRECT, LeanWebSocketsProtocol

from .recording_transport import RecordingTransport

App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


async def _turns(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


class Peer:
    """The master's protocol for one connection to ``app``, and the worker's end of it."""

    def __init__(self, app: App) -> None:
        config = uvicorn.Config(app, ws=LeanWebSocketsProtocol, lifespan="off", proxy_headers=False)
        config.load()
        self.server = LeanWebSocketsProtocol(
            config=config, server_state=ServerState(), app_state={}
        )
        self.transport = RecordingTransport()
        self.server.connection_made(self.transport)
        self.client = ClientProtocol(parse_uri("ws://127.0.0.1:8000/v1/worker"))
        self._seen = 0

    async def open(self) -> None:
        """The handshake, answered by the app's ``accept``."""
        self.client.send_request(self.client.connect())
        self.server.data_received(b"".join(self.client.data_to_send()))
        await _turns()
        self.client.receive_data(self.transport.writes[0])  # the 101 response
        self._seen = 1
        assert self.client.handshake_exc is None

    def send(self, text: str) -> None:
        """One text frame from the worker, in a read of its own."""
        self.client.send_text(text.encode())
        self.server.data_received(b"".join(self.client.data_to_send()))

    def written(self) -> list[list[Frame]]:
        """The frames of each write since the last call, as the worker reads them."""
        writes = []
        for data in self.transport.writes[self._seen :]:
            self.client.receive_data(data)
            writes.append([e for e in self.client.events_received() if isinstance(e, Frame)])
        self._seen = len(self.transport.writes)
        return writes


def _texts(writes: list[list[Frame]]) -> list[list[bytes]]:
    return [[frame.data for frame in frames if frame.opcode is Opcode.TEXT] for frames in writes]


def test_a_frame_the_app_takes_directly_skips_its_queue() -> None:
    taken: list[bytes] = []
    received: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await WebSocket(scope, receive, send).accept()
        scope["extensions"][DIRECT].on_text = lambda text: taken.append(text) or True
        received.append(await receive())

    async def scenario() -> Peer:
        peer = Peer(app)
        await peer.open()
        peer.send("one")
        peer.send("two")
        await _turns()
        peer.server.connection_lost(None)
        await _turns()
        return peer

    peer = asyncio.run(scenario())
    assert taken == [b"one", b"two"]
    assert [m["type"] for m in received] == ["websocket.disconnect"]
    assert peer.transport.read_pauses == 0  # uvicorn pauses reading for each frame it queues


def test_a_frame_the_app_declines_goes_through_its_queue_and_none_overtakes_it() -> None:
    offered: list[bytes] = []
    received: list[str] = []
    reading = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        websocket = WebSocket(scope, receive, send)
        await websocket.accept()
        # declines "one", would take anything else
        scope["extensions"][DIRECT].on_text = lambda text: offered.append(text) or text != b"one"
        await reading.wait()
        received.extend([await websocket.receive_text(), await websocket.receive_text()])

    async def scenario() -> None:
        peer = Peer(app)
        await peer.open()
        peer.send("one")  # declined: queued for the app, which is not reading yet
        peer.send("two")  # behind it in the queue, not offered
        await _turns()
        reading.set()
        await _turns()
        peer.server.connection_lost(None)
        await _turns()

    asyncio.run(scenario())
    assert offered == [b"one"]
    assert received == ["one", "two"]


class SessionApp:
    """An app that runs a checked-in :class:`WorkerSession` until told to stop."""

    def __init__(self, *, batch: bool) -> None:
        self.batch = batch
        self.session: WorkerSession | None = None
        self.done = asyncio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        websocket = WebSocket(scope, receive, send)
        await websocket.accept()
        session = WorkerSession(websocket, batch=self.batch)
        session.state = SessionState.CHECKED_IN
        self.session = session
        await self.done.wait()
        await session.finish()

    async def start(self) -> tuple[Peer, WorkerSession]:
        peer = Peer(self)
        await peer.open()
        await _turns()  # the session's writer waits for frames
        assert self.session is not None and self.session.direct is peer.server
        return peer, self.session

    async def stop(self, peer: Peer) -> None:
        self.done.set()
        await _turns()
        peer.server.connection_lost(None)
        await _turns()


def test_the_frames_of_one_pass_go_in_one_write() -> None:
    async def scenario(batch: bool) -> list[list[bytes]]:
        app = SessionApp(batch=batch)
        peer, session = await app.start()
        session.send(b'{"a":1}')
        session.send(b'{"b":2}')
        assert peer.written() == []  # at the end of the pass, not before
        await _turns(1)
        writes = _texts(peer.written())
        session.send(b'{"c":3}')
        await _turns(1)
        writes += _texts(peer.written())
        await app.stop(peer)
        return writes

    assert asyncio.run(scenario(batch=True)) == [[b'[{"a":1},{"b":2}]'], [b'{"c":3}']]
    assert asyncio.run(scenario(batch=False)) == [[b'{"a":1}', b'{"b":2}'], [b'{"c":3}']]


def test_a_flush_writes_the_frames_of_the_pass_at_once() -> None:
    async def scenario(batch: bool) -> tuple[list[list[bytes]], list[list[bytes]]]:
        app = SessionApp(batch=batch)
        peer, session = await app.start()
        session.flush()  # nothing queued: nothing written
        session.send(b'{"a":1}')
        session.send(b'{"b":2}')
        session.flush()
        at_once = _texts(peer.written())
        await _turns(1)  # the end of the pass finds nothing left
        later = _texts(peer.written())
        await app.stop(peer)
        return at_once, later

    assert asyncio.run(scenario(batch=True)) == ([[b'[{"a":1},{"b":2}]']], [])
    assert asyncio.run(scenario(batch=False)) == ([[b'{"a":1}', b'{"b":2}']], [])


def test_a_flush_on_a_full_socket_leaves_the_frames_to_the_writer() -> None:
    async def scenario() -> list[bytes]:
        app = SessionApp(batch=False)
        peer, session = await app.start()
        peer.server.pause_writing()
        session.send(b'"first"')
        session.flush()
        session.send(b'"second"')
        assert peer.written() == []
        peer.server.resume_writing()
        await _turns()
        texts = [text for write in _texts(peer.written()) for text in write]
        await app.stop(peer)
        return texts

    assert asyncio.run(scenario()) == [b'"first"', b'"second"']


def test_frames_wait_for_a_full_socket_in_order() -> None:
    async def scenario() -> list[bytes]:
        app = SessionApp(batch=False)
        peer, session = await app.start()
        peer.server.pause_writing()  # the socket's buffer is full
        session.send(b'"first"')
        await _turns()
        assert peer.written() == []  # the writer holds it until the socket drains
        session.send(b'"second"')
        peer.server.resume_writing()  # drained: the writer is about to write "first"
        await _turns()
        texts = [text for write in _texts(peer.written()) for text in write]
        await app.stop(peer)
        return texts

    assert asyncio.run(scenario()) == [b'"first"', b'"second"']


def test_a_close_goes_after_the_frames_sent_before_it() -> None:
    async def scenario() -> list[list[Frame]]:
        app = SessionApp(batch=False)
        peer, session = await app.start()
        session.send(b'"last words"')
        session.close(1008, "bad_frame")
        session.send(b'"too late"')
        await _turns()
        writes = peer.written()
        await app.stop(peer)
        return writes

    frames = [frame for write in asyncio.run(scenario()) for frame in write]
    assert [(f.opcode, f.data[2:] if f.opcode is Opcode.CLOSE else f.data) for f in frames] == [
        (Opcode.TEXT, b'"last words"'),
        (Opcode.CLOSE, b"bad_frame"),
    ]


def test_nothing_is_written_once_the_connection_is_lost() -> None:
    async def scenario() -> list[list[Frame]]:
        app = SessionApp(batch=False)
        peer, session = await app.start()
        peer.server.connection_lost(None)  # the worker went away; the app has not heard yet
        session.send(b'"into the void"')
        await _turns()
        writes = peer.written()
        app.done.set()
        await _turns()
        return writes

    assert asyncio.run(scenario()) == []


def test_no_frame_is_written_directly_after_a_close_frame() -> None:
    async def scenario() -> tuple[bool, bool]:
        app = SessionApp(batch=False)
        peer, _ = await app.start()
        before = peer.server.write_texts([b'"open"'])
        peer.server.conn.send_close(1000)  # closing: the close frame is the last one
        after = peer.server.write_texts([b'"closing"'])
        app.done.set()
        await _turns()
        return before, after

    assert asyncio.run(scenario()) == (True, False)
