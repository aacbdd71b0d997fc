"""The worker's WebSocket connection: websockets' asyncio client, with short cuts for
the usual frame each way: reading the master's (:func:`mawex.wire.ws_frames.lone_text_frame`),
writing its own (:meth:`WorkerConnection.write_text`)."""

from __future__ import annotations

from collections.abc import Callable

from websockets.asyncio.client import ClientConnection
from websockets.frames import Frame, Opcode
from websockets.protocol import State

from mawex.wire.ws_frames import client_text_frame, lone_text_frame


class WorkerConnection(ClientConnection):
    """websockets' :class:`ClientConnection`; a read that is one lone text frame goes
    to :attr:`on_text` or straight to the received messages, anything else through
    websockets' parser; :meth:`write_text` writes a text frame at once."""

    #: Takes the UTF-8 text of a lone text frame and says whether it handled it; when
    #: it did not, the frame joins the received messages as any other. Offered only
    #: while a ``recv()`` waits with no message received before it, so a frame never
    #: overtakes one read earlier or one still being handled.
    on_text: Callable[[bytes], bool] | None = None

    def data_received(self, data: bytes) -> None:
        if not self.take_text_frame(data):
            super().data_received(data)

    def take_text_frame(self, data: bytes) -> bool:
        """Take ``data`` if it is a lone text frame (see
        :func:`~mawex.wire.ws_frames.lone_text_frame`); else change nothing."""
        payload = lone_text_frame(data, self.protocol)
        if payload is None:
            return False
        on_text, received = self.on_text, self.recv_messages
        if (
            on_text is None
            or not received.get_in_progress  # nobody waits in recv()
            or len(received.frames)
            or not on_text(payload)
        ):
            received.put(Frame(Opcode.TEXT, payload))
        return True

    def write_text(self, payload: bytes) -> bool:
        """Write ``payload`` (UTF-8 text) as one text frame at once, instead of through
        ``send()``'s context; False, and nothing written, while the connection is not
        open (closing included), is sending a fragmented message or has a full write
        buffer."""
        if (
            self.protocol.state is not State.OPEN
            or self.send_in_progress is not None
            or self.paused
        ):
            return False
        self.transport.write(client_text_frame(payload))
        return True
