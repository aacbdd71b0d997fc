"""HTTP bodies: strict schemas for submissions, with the checks that need no state."""

from __future__ import annotations

import codecs
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar, cast
from urllib.parse import parse_qsl

import msgspec

from mawex.core.decide import NewTask
from mawex.errors import Rejected, TooLarge
from mawex.model import MAX_ATTEMPTS_LIMIT, check_id, check_name
from mawex.wire.worker import MAX_ERROR_CHARS

__all__ = ["MAX_ERROR_CHARS", "ApiLimits", "BatchIn", "TaskIn"]

_T = TypeVar("_T")
Seconds = Annotated[float, msgspec.Meta(gt=0, le=10_000_000)]


class TaskIn(msgspec.Struct, forbid_unknown_fields=True):
    """One task as submitted: ``POST /v1/tasks`` and each item of a batch."""

    id: str
    group: str
    payload: msgspec.Raw = msgspec.Raw(b"null")
    #: A JSON integer; ``3.0`` is one too (as in JSON Schema), ``3.5`` is not.
    max_attempts: Annotated[float, msgspec.Meta(ge=1, le=MAX_ATTEMPTS_LIMIT, multiple_of=1)] = 1
    timeout_s: Seconds | None = None
    pending_timeout_s: Seconds | None = None


class BatchIn(msgspec.Struct, forbid_unknown_fields=True):
    """``POST /v1/tasks/batch``."""

    tasks: list[TaskIn]


#: Room in a frame or body for everything but the payload, result and error.
FRAME_OVERHEAD = 64 * 1024


@dataclass(frozen=True, slots=True)
class ApiLimits:
    """Size limits of the HTTP API and the worker channel, in bytes and items.

    ``max_payload_bytes`` bounds a task's JSON payload (``--max-payload``),
    ``max_result_bytes`` an attempt's JSON result (``--max-result``: a larger one
    fails its attempt), ``max_batch_tasks`` and ``max_batch_bytes`` a
    ``POST /v1/tasks/batch`` (``--max-batch``). The largest request body and the
    largest WebSocket message follow from them.
    """

    max_payload_bytes: int = 1 << 20
    max_result_bytes: int = 1 << 20
    max_batch_tasks: int = 10_000
    max_batch_bytes: int = 64 << 20

    @property
    def max_task_body(self) -> int:
        return self.max_payload_bytes + 4096

    @property
    def max_body(self) -> int:
        """The largest HTTP request body of any endpoint."""
        return max(self.max_task_body, self.max_batch_bytes)

    @property
    def max_frame_bytes(self) -> int:
        """The largest worker-channel message: a result or a payload, an error, the rest."""
        largest = max(self.max_payload_bytes, self.max_result_bytes)
        return largest + 6 * MAX_ERROR_CHARS + FRAME_OVERHEAD  # JSON escapes: ≤ 6 bytes a char


_task_decoder = msgspec.json.Decoder(TaskIn)
_batch_decoder = msgspec.json.Decoder(BatchIn)


def _decode(decoder: msgspec.json.Decoder[_T], body: bytes) -> _T:
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise Rejected(f"invalid request body: {exc}") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise Rejected(f"malformed JSON: {exc}") from None


def _to_new_task(item: TaskIn, limits: ApiLimits, where: str = "") -> NewTask:
    try:
        check_id(item.id)
        check_name(item.group, "group")
    except Rejected as exc:
        raise Rejected(f"{where}{exc}") from None
    try:  # a payload is kept as the client's bytes: they must be UTF-8, as JSON text is
        codecs.utf_8_decode(item.payload, "strict", True)
    except UnicodeDecodeError as exc:
        raise Rejected(f"{where}payload of {item.group}/{item.id} is not UTF-8: {exc}") from None
    if len(item.payload) > limits.max_payload_bytes:
        raise TooLarge(
            f"{where}payload of {item.group}/{item.id} is {len(item.payload)} bytes; "
            f"the limit is {limits.max_payload_bytes}"
        )
    return NewTask(
        group=item.group,
        id=item.id,
        payload=item.payload,
        max_attempts=int(item.max_attempts),
        timeout_s=item.timeout_s,
        pending_timeout_s=item.pending_timeout_s,
    )


def parse_task(body: bytes, limits: ApiLimits) -> NewTask:
    """Validate a ``POST /v1/tasks`` body."""
    if len(body) > limits.max_task_body:
        raise TooLarge(f"request body of {len(body)} bytes is over the limit")
    return _to_new_task(_decode(_task_decoder, body), limits)


def parse_batch(body: bytes, limits: ApiLimits) -> list[NewTask]:
    """Validate a ``POST /v1/tasks/batch`` body, all or nothing."""
    if len(body) > limits.max_batch_bytes:
        raise TooLarge(f"batch body of {len(body)} bytes is over {limits.max_batch_bytes}")
    batch = _decode(_batch_decoder, body)
    if len(batch.tasks) > limits.max_batch_tasks:
        raise TooLarge(
            f"batch of {len(batch.tasks)} tasks is over the limit of {limits.max_batch_tasks}"
        )
    return [_to_new_task(t, limits, f"tasks[{i}]: ") for i, t in enumerate(batch.tasks)]


def parse_int(value: str | None, name: str, default: int, low: int, high: int) -> int:
    """A query parameter as an int within [low, high]."""
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise Rejected(f"query parameter {name!r} must be an integer, not {value!r}") from None
    if not low <= number <= high:
        raise Rejected(f"query parameter {name!r} must be between {low} and {high}")
    return number


#: Query strings up to this many bytes are parsed once and remembered: clients repeat
#: the same few (``wait=30``), and longer ones are not worth the memory.
CACHED_QUERY_BYTES = 100

_F = TypeVar("_F", bound=Callable[..., Any])


def remembered_per_query(fn: _F) -> _F:
    """``fn``, whose positional arguments end with a query string, remembered for each
    short query (:data:`CACHED_QUERY_BYTES`) and its other arguments; a call that
    raises is not remembered."""
    remembered = functools.lru_cache(maxsize=256)(fn)

    def call(*args: Any) -> Any:
        return (remembered if len(args[-1]) <= CACHED_QUERY_BYTES else fn)(*args)

    return cast(_F, functools.wraps(fn)(call))


@remembered_per_query
def query_pairs(query: bytes) -> tuple[tuple[str, str], ...]:
    """A request's query string as (name, value) pairs, in order, blank values kept."""
    return tuple(parse_qsl(query.decode("latin-1"), keep_blank_values=True))


def parse_flag(value: str | None, name: str) -> bool:
    """A yes/no query parameter: ``1``/``true`` or ``0``/``false`` (absent: no)."""
    if value is None:
        return False
    lowered = value.lower()
    if lowered in ("1", "true"):
        return True
    if lowered in ("0", "false", ""):
        return False
    raise Rejected(f"query parameter {name!r} must be 1, true, 0 or false, not {value[:40]!r}")


def parse_seconds(value: str | None, name: str, high: float) -> float:
    """A query parameter as seconds within [0, high]."""
    if value is None or value == "":
        return 0.0
    try:
        number = float(value)
    except ValueError:
        raise Rejected(f"query parameter {name!r} must be a number, not {value!r}") from None
    if not 0 <= number <= high:
        raise Rejected(f"query parameter {name!r} must be between 0 and {high:g}")
    return number
