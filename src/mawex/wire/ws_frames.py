"""Short cuts around websockets' framing for the worker channel's usual frame.

Nearly every read on the worker channel, on either side, is one whole, unfragmented
text frame (an assignment, an ack, a result, a heartbeat) arriving alone. websockets
parses it with a general, generator-based reader that costs a small frame more than
everything else between the socket and the code that handles it.
:func:`lone_text_frame` recognises that case and returns its text, so a connection can
deliver it at once; for anything else it returns None and the connection hands the
bytes to websockets' parser, which handles the protocol's errors and closing as ever.
:func:`server_text_frame` and :func:`client_text_frame` build such a frame to write.
"""

from __future__ import annotations

import os

from websockets.protocol import Protocol, Side, State

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets built without its C extension
    from websockets.utils import apply_mask

#: The first byte of a final text frame without extension bits (RFC 6455, 5.2).
_FINAL_TEXT = 0x81


def lone_text_frame(data: bytes, protocol: Protocol) -> bytes | None:
    """The UTF-8 text of ``data`` if it is exactly one final text frame within
    ``protocol``'s size limit, masked as a client's frames are (unmasked when
    ``protocol`` is a client's), and ``protocol``'s parser is between frames of an open
    connection; else None, and ``data`` is for ``protocol.receive_data``."""
    size = len(data)
    if size < 2 or data[0] != _FINAL_TEXT:
        return None
    reader = getattr(protocol, "reader", None)
    if (
        protocol.state is not State.OPEN
        or reader is None
        or getattr(reader, "buffer", True)  # bytes of a frame read before
        or getattr(protocol, "current_size", True) is not None  # inside a message
        or getattr(protocol, "extensions", True)
    ):
        return None
    masked = protocol.side is Side.SERVER
    length = data[1]
    if bool(length & 0x80) is not masked:  # a client masks every frame, a server none
        return None
    length &= 0x7F
    start = 2
    if length == 126:
        if size < 4:
            return None
        length = int.from_bytes(data[2:4], "big")
        start = 4
    elif length == 127:
        return None
    if masked:
        start += 4
    limit = getattr(protocol, "max_message_size", 0)
    if size != start + length or (limit is not None and length > limit):
        return None
    payload = data[start:]
    if masked:
        payload = apply_mask(payload, data[start - 4 : start])
    try:
        payload.decode()  # websockets' parser checks it too, and closes with 1007
    except UnicodeDecodeError:
        return None
    return payload


def server_text_frame(payload: bytes) -> bytes:
    """``payload`` (UTF-8 text) as one final, unmasked text frame: what a server sends
    (RFC 6455, 5.2), in the form websockets writes it."""
    return _text_head(len(payload), 0) + payload


def client_text_frame(payload: bytes) -> bytes:
    """``payload`` (UTF-8 text) as one final text frame masked with a fresh random
    key, as a client must send it (RFC 6455, 5.3)."""
    mask = os.urandom(4)
    return _text_head(len(payload), 0x80) + mask + apply_mask(payload, mask)


def _text_head(size: int, mask_bit: int) -> bytes:
    if size < 126:
        return bytes((_FINAL_TEXT, mask_bit | size))
    if size < 1 << 16:
        return bytes((_FINAL_TEXT, mask_bit | 126)) + size.to_bytes(2, "big")
    return bytes((_FINAL_TEXT, mask_bit | 127)) + size.to_bytes(8, "big")
