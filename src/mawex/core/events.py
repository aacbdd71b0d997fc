"""Journal events and their JSON codec.

Every durable state change of the master is one of these events. The result
topic is the subset whose ``type`` is in :data:`TOPIC_TYPES`; its JSON form plus
an ``offset`` is exactly what ``GET /v1/results`` returns.
"""

from __future__ import annotations

from typing import Final

import msgspec

Raw = msgspec.Raw


class _Event(msgspec.Struct, frozen=True, tag_field="type", omit_defaults=True):
    pass


class Accepted(_Event, frozen=True, tag="accepted"):
    """A task was accepted: it is pending from now on."""

    group: str
    id: str
    payload: Raw
    at: float
    max_attempts: int = 1
    timeout_s: float | None = None
    pending_timeout_s: float | None = None


class Scheduled(_Event, frozen=True, tag="scheduled"):
    """Attempt ``attempt`` of a task was given to ``worker`` in ``pod``."""

    group: str
    id: str
    attempt: int
    worker: str
    pod: str
    at: float


class Retrying(_Event, frozen=True, tag="retrying"):
    """An attempt failed and another follows: the task is pending again.

    ``release`` says whether the attempt's pod is free now (the worker is done);
    a timed-out attempt whose code is still running keeps its pod busy.
    """

    group: str
    id: str
    attempt: int
    error: str
    at: float
    release: bool = True


class Completed(_Event, frozen=True, tag="completed"):
    """The task finished with a result (its worker reported it, so its pod is free)."""

    group: str
    id: str
    attempt: int
    result: Raw
    at: float


class Failed(_Event, frozen=True, tag="failed"):
    """The task failed for good, after its last attempt."""

    group: str
    id: str
    attempt: int
    error: str
    at: float
    release: bool = True


class Cancelled(_Event, frozen=True, tag="cancelled"):
    """The task was cancelled; a running attempt keeps its pod until the worker confirms."""

    group: str
    id: str
    attempt: int
    at: float


class Expired(_Event, frozen=True, tag="expired"):
    """The task waited longer than its pending timeout."""

    group: str
    id: str
    attempt: int
    at: float


class Requeued(_Event, frozen=True, tag="requeued"):
    """A worker handed an attempt back unfinished (clean shutdown): pending again, no failure."""

    group: str
    id: str
    attempt: int
    reason: str
    at: float


class Released(_Event, frozen=True, tag="released"):
    """The pod of an attempt whose outcome was already recorded is free again."""

    pod: str
    worker: str
    group: str
    id: str
    attempt: int
    at: float


class Purged(_Event, frozen=True, tag="purged"):
    """Terminal tasks past retention were forgotten (their ids may be reused)."""

    keys: list[tuple[str, str]]
    at: float


Event = (
    Accepted
    | Scheduled
    | Retrying
    | Completed
    | Failed
    | Cancelled
    | Expired
    | Requeued
    | Released
    | Purged
)

#: Event types that appear on the result topic.
TOPIC_TYPES: Final = frozenset(
    {"scheduled", "retrying", "completed", "failed", "cancelled", "expired"}
)
#: Topic types that end a task.
TERMINAL_TYPES: Final = frozenset({"completed", "failed", "cancelled", "expired"})

TopicEvent = Scheduled | Retrying | Completed | Failed | Cancelled | Expired

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Event)


def encode(event: Event) -> bytes:
    """Encode an event as JSON."""
    return _encoder.encode(event)


def decode(data: bytes | str) -> Event:
    """Decode an event from JSON."""
    event: Event = _decoder.decode(data)
    return event


_TOPIC_CLASSES = (Scheduled, Retrying, Completed, Failed, Cancelled, Expired)
#: Event classes that end a task (a tuple: cheaper for isinstance than a union).
TERMINAL_CLASSES = (Completed, Failed, Cancelled, Expired)


def is_topic(event: Event) -> bool:
    """Whether the event appears on the result topic."""
    return isinstance(event, _TOPIC_CLASSES)


def topic_record_body(body: bytes, offset: int) -> bytes:
    """The JSON object of an encoded topic event as the HTTP API shows it, with its ``offset``."""
    return b'{"offset":' + str(offset).encode() + b"," + body[1:]


def type_of(event: Event) -> str:
    """The event's ``type`` tag (``"completed"``, ...)."""
    tag: str = type(event).__struct_config__.tag  # type: ignore[assignment]
    return tag
