"""The worker's WebSocket connection: websockets' asyncio client, with a short cut for
the master's usual frame (:func:`mawex.wire.ws_frames.lone_text_frame`)."""

from __future__ import annotations

from websockets.asyncio.client import ClientConnection
from websockets.frames import Frame, Opcode

from mawex.wire.ws_frames import lone_text_frame


class WorkerConnection(ClientConnection):
    """websockets' :class:`ClientConnection`; a read that is one lone text frame goes
    straight to the received messages, anything else through websockets' parser."""

    def data_received(self, data: bytes) -> None:
        if not self.take_text_frame(data):
            super().data_received(data)

    def take_text_frame(self, data: bytes) -> bool:
        """Add ``data``'s message to those received if it is a lone text frame (see
        :func:`~mawex.wire.ws_frames.lone_text_frame`); else change nothing."""
        payload = lone_text_frame(data, self.protocol)
        if payload is None:
            return False
        self.recv_messages.put(Frame(Opcode.TEXT, payload))
        return True
