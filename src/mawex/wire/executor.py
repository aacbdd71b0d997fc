"""The connect-back channel between a worker and the executor process of a forked or
k8s sandbox: one WebSocket per attempt, JSON text frames.

Executor → worker::

    register   first frame: the one-time secret of this attempt (from the --connect URL)
    result     the attempt's outcome: ``ok`` with ``result``, or ``error``
    log        optional progress line (shown in the worker's log)

Worker → executor::

    task       the attempt to run: ``group``, ``id``, ``attempt``, ``payload``, the
               executor reference and its ``--arg``s, and ``timeout_s``
    ack        the result was received; the executor may exit
    reject     the secret is unknown or already used; the executor exits non-zero

The secret is random per attempt and usable once, so nothing but the spawned
executor can fetch a task's payload or post its result.

Transports. The executor is told where to connect by a URL:

``ws://host:port/v1/executor?secret=S`` (or ``wss://``)
    a WebSocket to the worker; one JSON text frame per message. The secret is
    sent in the ``register`` frame only, never in the HTTP request.
``fd://N?secret=S``
    an extension for processes the worker starts itself (the forked sandbox): an
    already connected stream socket inherited as file descriptor ``N``. Each
    message is its JSON bytes preceded by their length as a 4-byte big-endian
    unsigned integer (:data:`FRAME_HEADER`). The frames and their order are the
    same as over a WebSocket, except that the worker may write the ``task`` frame
    before the ``register`` frame arrives, and that the executor need not wait for
    the ``ack``: what it wrote to a Unix socket before closing it is not lost.
"""

from __future__ import annotations

import struct
from urllib.parse import urlsplit

import msgspec

Raw = msgspec.Raw

#: The length prefix of a frame on an ``fd://`` stream socket.
FRAME_HEADER = struct.Struct(">I")


class _Frame(msgspec.Struct, frozen=True, tag_field="type", forbid_unknown_fields=True):
    pass


class Register(_Frame, frozen=True, tag="register"):
    secret: str
    pid: int = 0


class Result(_Frame, frozen=True, tag="result"):
    ok: bool
    result: Raw = Raw(b"null")
    error: str | None = None


class Log(_Frame, frozen=True, tag="log"):
    line: str


class TaskFrame(_Frame, frozen=True, tag="task"):
    group: str
    id: str
    attempt: int
    payload: Raw
    executor: str
    args: dict[str, str] = {}
    timeout_s: float | None = None


class AckFrame(_Frame, frozen=True, tag="ack"):
    pass


class Reject(_Frame, frozen=True, tag="reject"):
    reason: str


ExecutorFrame = Register | Result | Log
WorkerFrame = TaskFrame | AckFrame | Reject

_encoder = msgspec.json.Encoder()
_executor_decoder = msgspec.json.Decoder(ExecutorFrame)
_worker_decoder = msgspec.json.Decoder(WorkerFrame)


def encode(frame: ExecutorFrame | WorkerFrame) -> bytes:
    """Encode a frame as JSON."""
    return _encoder.encode(frame)


def decode_executor_frame(data: bytes | str) -> ExecutorFrame:
    """Decode an executor → worker frame; raises msgspec errors on bad input."""
    frame: ExecutorFrame = _executor_decoder.decode(data)
    return frame


def decode_worker_frame(data: bytes | str) -> WorkerFrame:
    """Decode a worker → executor frame."""
    frame: WorkerFrame = _worker_decoder.decode(data)
    return frame


def split_connect_url(url: str) -> tuple[str, str]:
    """``ws://h:p/v1/executor?secret=S`` → ``("ws://h:p/v1/executor", "S")``.

    ``fd://N?secret=S`` gives ``("fd://N", "S")``. Raises ValueError when the URL is
    neither ``ws(s)://host...`` nor ``fd://N``, or carries no secret.
    """
    parts = urlsplit(url)
    if parts.scheme == "fd":
        if not parts.netloc.isdigit():
            raise ValueError(f"invalid connect URL {url!r}: expected fd://N?secret=...")
    elif parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"invalid connect URL {url!r}: expected ws://host:port/...?secret=...")
    secret = ""
    for item in parts.query.split("&"):
        key, _, value = item.partition("=")
        if key == "secret":
            secret = value
    if not secret:
        raise ValueError(f"invalid connect URL {url!r}: no secret")
    return parts._replace(query="", fragment="").geturl(), secret
