"""The worker channel, ``WS /v1/worker``: one JSON object per text frame.

Worker → master::

    hello      first frame: who the worker is, and any attempt it is still running
    heartbeat  "still here" (any frame counts; sent every ``heartbeat_s`` when idle)
    finished   an attempt's outcome; re-sent until acked (also after a reconnect)
    free       a timed-out or cancelled attempt's code has returned: the pod is free
    bye        clean check-out; ``handback`` gives an unfinished attempt back

Master → worker::

    welcome    hello accepted: epoch and heartbeat interval
    assign     run this attempt
    ack        the outcome of this attempt is durable; stop re-sending it
    cancel     stop this attempt (cancelled, timed out, or no longer yours)
    error      the session ends: ``not_leader`` (with a ``leader`` hint),
               ``unauthorized`` or ``invalid``

Every attempt is named by ``(group, id, attempt)``; a worker runs at most one
attempt at a time and its ``finished`` for attempt N is idempotent.

From protocol version 2 (the worker's ``hello.version``) a master → worker frame
may be a JSON array of messages, handled in order: the ``ack`` of one attempt
and the ``assign`` of the next go out as one frame.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

Raw = msgspec.Raw

PROTOCOL_VERSION = 2
#: The first version whose workers take a JSON array of master messages in one frame.
BATCH_VERSION = 2

#: Longest error text of one attempt: a worker cuts a longer one, and so does the master.
MAX_ERROR_CHARS = 16 * 1024

#: A group, pod or worker id on the wire (their charset is checked at check-in).
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
#: A task id on the wire.
TaskId = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
#: An attempt number.
AttemptNo = Annotated[int, msgspec.Meta(ge=0, le=1 << 31)]


class _Msg(msgspec.Struct, frozen=True, tag_field="type", forbid_unknown_fields=True):
    pass


class AttemptRef(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Names one attempt of one task."""

    group: Name
    id: TaskId
    attempt: AttemptNo


# -- worker -> master ---------------------------------------------------------


class Hello(_Msg, frozen=True, tag="hello"):
    worker: Name
    group: Name
    pod: Name
    sandbox: Annotated[str, msgspec.Meta(max_length=32)] = "local"
    running: AttemptRef | None = None
    #: The protocol version the worker speaks; a hello without one speaks version 1.
    version: Annotated[int, msgspec.Meta(ge=0, le=1 << 31)] = 1


class Heartbeat(_Msg, frozen=True, tag="heartbeat"):
    pass


class Finished(_Msg, frozen=True, tag="finished"):
    """``ok`` with ``result``, or not ``ok`` with ``error``.

    ``busy`` means the attempt is over (timed out) but its code still runs: the
    pod stays busy until a ``free`` frame follows.
    """

    group: Name
    id: TaskId
    attempt: AttemptNo
    ok: bool
    result: Raw = Raw(b"null")
    error: str | None = None
    busy: bool = False


class Free(_Msg, frozen=True, tag="free"):
    group: Name
    id: TaskId
    attempt: AttemptNo


class Bye(_Msg, frozen=True, tag="bye"):
    handback: AttemptRef | None = None


WorkerMessage = Hello | Heartbeat | Finished | Free | Bye

# -- master -> worker ---------------------------------------------------------


class Welcome(_Msg, frozen=True, tag="welcome"):
    """``max_result_bytes``: the master fails an attempt whose result is larger."""

    epoch: int
    heartbeat_s: float
    master_id: str = "default"
    max_result_bytes: int | None = None


class Assign(_Msg, frozen=True, tag="assign"):
    group: str
    id: str
    attempt: int
    payload: Raw
    timeout_s: float | None = None


class Ack(_Msg, frozen=True, tag="ack"):
    group: str
    id: str
    attempt: int


class Cancel(_Msg, frozen=True, tag="cancel"):
    group: str
    id: str
    attempt: int
    reason: str = "cancelled"


class Error(_Msg, frozen=True, tag="error"):
    error: str
    detail: str = ""
    leader: str | None = None


MasterMessage = Welcome | Assign | Ack | Cancel | Error

_encoder = msgspec.json.Encoder()
worker_decoder = msgspec.json.Decoder(WorkerMessage)
master_decoder = msgspec.json.Decoder(MasterMessage)
master_batch_decoder = msgspec.json.Decoder(list[MasterMessage])


def encode(message: WorkerMessage | MasterMessage) -> bytes:
    """Encode a message as a JSON frame."""
    return _encoder.encode(message)


def decode_worker_message(frame: bytes | str) -> WorkerMessage:
    """Decode a worker → master frame; raises ``msgspec.ValidationError``/``DecodeError``."""
    message: WorkerMessage = worker_decoder.decode(frame)
    return message


def decode_master_message(frame: bytes | str) -> MasterMessage:
    """Decode a master → worker frame holding one message."""
    message: MasterMessage = master_decoder.decode(frame)
    return message


def decode_master_frame(frame: bytes | str) -> list[MasterMessage]:
    """Decode a master → worker frame: one message, or an array of them (version 2)."""
    start = frame.lstrip()[:1]
    if start in ("[", b"["):
        messages: list[MasterMessage] = master_batch_decoder.decode(frame)
        return messages
    return [master_decoder.decode(frame)]


def join_frames(frames: list[bytes]) -> bytes:
    """Several encoded messages as one array frame (for workers of version 2 or later)."""
    return b"[" + b",".join(frames) + b"]"
