"""Value types every layer shares: task identity, specs, statuses and results."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from mawex.errors import Rejected

#: Task ids: 1-200 characters, a letter or digit first, then letters, digits and ``_ . : @ + = -``.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@+=-]{0,199}$"
#: Groups, pods and worker ids: 1-64 characters, a letter or digit first, then ``_ . -``.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_ID_RE = re.compile(ID_PATTERN)
_NAME_RE = re.compile(NAME_PATTERN)

MAX_ATTEMPTS_LIMIT = 100


class TaskStatus(StrEnum):
    """Where a task is in its life."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"

    @property
    def terminal(self) -> bool:
        return self not in (TaskStatus.PENDING, TaskStatus.RUNNING)


def check_id(value: object, what: str = "id") -> str:
    """Return ``value`` if it is a valid task id, else raise :class:`Rejected`."""
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        raise Rejected(
            f"invalid {what} {value!r}: 1-200 characters, a letter or digit first, "
            "then letters, digits and _ . : @ + = -"
        )
    return value


def check_name(value: object, what: str = "group") -> str:
    """Return ``value`` if it is a valid group, pod or worker name, else raise :class:`Rejected`."""
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise Rejected(
            f"invalid {what} {value!r}: 1-64 characters, a letter or digit first, "
            "then letters, digits and _ . -"
        )
    return value


@dataclass(frozen=True, slots=True)
class Task:
    """What an executor receives."""

    id: str
    group: str
    payload: Any
    attempt: int = 1


@dataclass(frozen=True, slots=True)
class TaskResult:
    """A task's status as the master reports it."""

    id: str
    group: str
    status: TaskStatus
    attempt: int
    result: Any = None
    error: str | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.status.terminal


@dataclass(frozen=True, slots=True)
class ResultEvent:
    """One event of the result topic."""

    offset: int
    type: str
    id: str
    group: str
    attempt: int
    at: float
    result: Any = None
    error: str | None = None
    worker: str | None = None
    pod: str | None = None


__all__ = [
    "ID_PATTERN",
    "MAX_ATTEMPTS_LIMIT",
    "NAME_PATTERN",
    "ResultEvent",
    "Task",
    "TaskResult",
    "TaskStatus",
    "check_id",
    "check_name",
]
