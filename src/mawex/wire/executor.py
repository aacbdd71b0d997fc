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
"""

from __future__ import annotations

import msgspec

Raw = msgspec.Raw


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
