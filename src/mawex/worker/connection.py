"""The worker's WebSocket connection: websockets' asyncio client, with a short cut for
the master's usual frame.

Nearly every read on a worker's connection is one whole, unfragmented text frame from
the master (an assignment, an ack), arriving alone. :class:`WorkerConnection` takes
such a read straight to the received messages, without websockets' general frame
parser (a generator-based reader that costs a small frame more than everything else
between the socket and the worker's code). Anything else (a frame cut across reads or
sharing one, binary, fragmented, control frames, compression, a size over the
limit, text that is not UTF-8, a connection not open) goes through websockets
unchanged, which handles the protocol's errors and closing as ever.
"""

from __future__ import annotations

from websockets.asyncio.client import ClientConnection
from websockets.frames import Frame, Opcode
from websockets.protocol import State

#: The first byte of a final text frame without extension bits (RFC 6455, 5.2).
_FINAL_TEXT = 0x81


class WorkerConnection(ClientConnection):
    """websockets' :class:`ClientConnection` with a short cut for a lone text frame."""

    def data_received(self, data: bytes) -> None:
        if not self.take_text_frame(data):
            super().data_received(data)

    def take_text_frame(self, data: bytes) -> bool:
        """If ``data`` is exactly one final, unmasked text frame of UTF-8 within the size
        limit, and websockets' parser is between frames of an open connection, add its
        message to those received and return True; else change nothing."""
        size = len(data)
        if size < 2 or data[0] != _FINAL_TEXT:
            return False
        protocol = self.protocol
        reader = getattr(protocol, "reader", None)
        if (
            protocol.state is not State.OPEN
            or reader is None
            or getattr(reader, "buffer", True)  # bytes of a frame read before
            or getattr(protocol, "current_size", True) is not None  # inside a message
            or getattr(protocol, "extensions", True)
        ):
            return False
        length = data[1]  # its top bit, the mask, must be clear: a server does not mask
        start = 2
        if length == 126 and size >= 4:
            length = int.from_bytes(data[2:4], "big")
            start = 4
        elif length >= 126:
            return False
        limit = getattr(protocol, "max_message_size", 0)
        if size != start + length or (limit is not None and length > limit):
            return False
        payload = data[start:]
        try:
            payload.decode()  # websockets' parser checks it too, and closes with 1007
        except UnicodeDecodeError:
            return False
        self.recv_messages.put(Frame(Opcode.TEXT, payload))
        return True
