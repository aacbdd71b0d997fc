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
"""

from __future__ import annotations

import msgspec

Raw = msgspec.Raw

PROTOCOL_VERSION = 1


class _Msg(msgspec.Struct, frozen=True, tag_field="type", forbid_unknown_fields=True):
    pass


class AttemptRef(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Names one attempt of one task."""

    group: str
    id: str
    attempt: int


# -- worker -> master ---------------------------------------------------------


class Hello(_Msg, frozen=True, tag="hello"):
    worker: str
    group: str
    pod: str
    sandbox: str = "local"
    running: AttemptRef | None = None
    version: int = PROTOCOL_VERSION


class Heartbeat(_Msg, frozen=True, tag="heartbeat"):
    pass


class Finished(_Msg, frozen=True, tag="finished"):
    """``ok`` with ``result``, or not ``ok`` with ``error``.

    ``busy`` means the attempt is over (timed out) but its code still runs: the
    pod stays busy until a ``free`` frame follows.
    """

    group: str
    id: str
    attempt: int
    ok: bool
    result: Raw = Raw(b"null")
    error: str | None = None
    busy: bool = False


class Free(_Msg, frozen=True, tag="free"):
    group: str
    id: str
    attempt: int


class Bye(_Msg, frozen=True, tag="bye"):
    handback: AttemptRef | None = None


WorkerMessage = Hello | Heartbeat | Finished | Free | Bye

# -- master -> worker ---------------------------------------------------------


class Welcome(_Msg, frozen=True, tag="welcome"):
    epoch: int
    heartbeat_s: float
    master_id: str = "default"


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


def encode(message: WorkerMessage | MasterMessage) -> bytes:
    """Encode a message as a JSON frame."""
    return _encoder.encode(message)


def decode_worker_message(frame: bytes | str) -> WorkerMessage:
    """Decode a worker → master frame; raises ``msgspec.ValidationError``/``DecodeError``."""
    message: WorkerMessage = worker_decoder.decode(frame)
    return message


def decode_master_message(frame: bytes | str) -> MasterMessage:
    """Decode a master → worker frame."""
    message: MasterMessage = master_decoder.decode(frame)
    return message
