"""The master's WebSocket protocol: uvicorn's websockets (sans-I/O) protocol, with a
short cut for the usual frame (:func:`mawex.wire.ws_frames.lone_text_frame`)."""

from __future__ import annotations

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame, Opcode

from mawex.wire.ws_frames import lone_text_frame


class LeanWebSocketsProtocol(WebSocketsSansIOProtocol):
    """uvicorn's protocol; a read that is one lone text frame goes straight to the app's
    queue, as uvicorn's own handling of a text frame would put it, anything else
    through websockets' parser."""

    def data_received(self, data: bytes) -> None:
        payload = lone_text_frame(data, self.conn)  # None once closing: not OPEN then
        if payload is None:
            super().data_received(data)
        else:
            self.handle_text(Frame(Opcode.TEXT, payload))
