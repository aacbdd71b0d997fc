"""The mawex exception tree.

    MawexError
    ├── Rejected              bad input: 4xx, nothing changed
    │   ├── NotFound          unknown task (404)
    │   ├── Unauthorized      missing or wrong token (401)
    │   ├── TooLarge          payload, result or batch over a limit (413)
    │   └── QueueFull         a group's pending queue is full (429)
    ├── NotLeader             a standby answered a write (503); carries the leader hint
    ├── Unavailable           no master answered (connection refused, timeouts)
    ├── TaskFailed            the task ended without a result (failed, cancelled, expired)
    │   ├── TaskCancelled
    │   └── TaskExpired
    ├── ResultTimeout         result() gave up waiting
    ├── JournalError          the journal store failed; the original error is __cause__
    │   └── FencedOut         a newer leader epoch exists: this master may not append
    ├── ExecutorLoadError     `module:attr` could not be imported or built
    └── ConfigError           a setting (journal URL, flag value) does not parse

Every error has a stable ``code`` (the ``error`` field of HTTP error bodies) and
an HTTP ``status``. With no message, the class docstring is the message.
"""

from __future__ import annotations

from typing import Any


class MawexError(Exception):
    """A mawex error."""

    code = "internal"
    status = 500

    def __init__(self, message: str | None = None) -> None:
        if not message:
            message = (self.__doc__ or self.code).strip().splitlines()[0]
        super().__init__(message)

    @property
    def detail(self) -> str:
        return str(self)

    def to_body(self) -> dict[str, Any]:
        """The JSON error body of the HTTP API."""
        return {"error": self.code, "detail": self.detail}


class Rejected(MawexError):
    """The request is invalid and was rejected; nothing changed."""

    code = "invalid"
    status = 400


class NotFound(Rejected):
    """No such task."""

    code = "not_found"
    status = 404


class Unauthorized(Rejected):
    """A valid bearer token is required."""

    code = "unauthorized"
    status = 401


class TooLarge(Rejected):
    """The request is over a size limit."""

    code = "too_large"
    status = 413


class QueueFull(Rejected):
    """The group's pending queue is full; retry later."""

    code = "queue_full"
    status = 429


class NotLeader(MawexError):
    """This master is a standby; writes go to the leader."""

    code = "not_leader"
    status = 503

    def __init__(self, leader: str | None = None, message: str | None = None) -> None:
        self.leader = leader
        super().__init__(message or f"not the leader (leader: {leader or 'unknown'})")

    def to_body(self) -> dict[str, Any]:
        return {"error": self.code, "detail": self.detail, "leader": self.leader}


class Unavailable(MawexError):
    """No master could be reached."""

    code = "unavailable"
    status = 503


class TaskFailed(MawexError):
    """The task ended without a result."""

    code = "task_failed"
    status = 500

    def __init__(
        self, group: str, id: str, error: str | None = None, status: str = "failed"
    ) -> None:
        self.group = group
        self.id = id
        self.error = error
        self.task_status = status
        super().__init__(f"task {group}/{id} {status}" + (f": {error}" if error else ""))


class TaskCancelled(TaskFailed):
    """The task was cancelled."""


class TaskExpired(TaskFailed):
    """The task expired before a worker took it."""


class ResultTimeout(MawexError):
    """The task did not reach a terminal state in time."""

    code = "timeout"
    status = 504


class JournalError(MawexError):
    """The journal store failed."""

    code = "journal_error"
    status = 503


class FencedOut(JournalError):
    """A newer leader epoch exists: this master may no longer append."""

    code = "fenced_out"


class ExecutorLoadError(MawexError):
    """The executor could not be loaded."""

    code = "executor_load"


class ConfigError(MawexError):
    """A setting is invalid."""

    code = "config"
    status = 400


__all__ = [
    "ConfigError",
    "ExecutorLoadError",
    "FencedOut",
    "JournalError",
    "MawexError",
    "NotFound",
    "NotLeader",
    "QueueFull",
    "Rejected",
    "ResultTimeout",
    "TaskCancelled",
    "TaskExpired",
    "TaskFailed",
    "TooLarge",
    "Unauthorized",
    "Unavailable",
]
