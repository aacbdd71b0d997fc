"""The master's WebSocket protocol: uvicorn's websockets (sans-I/O) protocol, with a
short cut for the usual frame each way.

Reading, a lone text frame (:func:`mawex.wire.ws_frames.lone_text_frame`) skips
websockets' parser; once the app has given the connection an ``on_text`` handler it
goes straight to it, instead of through uvicorn's queue, a pause of the socket's
reads and the app's task waking to read it. Writing, ``write_texts`` puts text
frames on the socket at once, instead of through the ASGI ``send`` coroutine. The
app finds the connection in its scope's extensions, under :data:`DIRECT`; without it
(another server) it keeps to ASGI.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State

from mawex.wire.ws_frames import lone_text_frame, server_text_frame

#: The scope extension under which a connection offers :class:`LeanWebSocketsProtocol`.
DIRECT = "mawex.direct"


class LeanWebSocketsProtocol(WebSocketsSansIOProtocol):
    """uvicorn's protocol with direct reads and writes of the usual text frame."""

    #: Takes the UTF-8 text of a lone text frame and says whether it handled it; when
    #: it did not, the frame goes to the app's queue as any other. Called only while
    #: that queue is empty, so a frame never overtakes one read before it.
    on_text: Callable[[bytes], bool] | None = None

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        if not self.close_sent:  # a handshake going on to the app
            extensions: dict[str, object] = self.scope["extensions"]  # type: ignore[assignment]
            extensions[DIRECT] = self

    def data_received(self, data: bytes) -> None:
        payload = lone_text_frame(data, self.conn)  # None once closing: not OPEN then
        if payload is None:
            super().data_received(data)
            return
        on_text = self.on_text
        if on_text is None or not self.queue.empty() or not on_text(payload):
            self.handle_text(Frame(Opcode.TEXT, payload))

    def write_texts(self, payloads: Sequence[bytes]) -> bool:
        """Write ``payloads`` as text frames in one write; False (nothing written) once
        the connection is closing (a close frame sent or received, the socket lost) or
        while its write buffer is full. For an accepted connection without extensions,
        as the master's are."""
        if (
            self.conn.state is not State.OPEN
            or self.transport.is_closing()
            or not self.writable.is_set()
        ):
            return False
        if len(payloads) == 1:
            self.transport.write(server_text_frame(payloads[0]))
        else:
            self.transport.write(b"".join(map(server_text_frame, payloads)))
        return True
