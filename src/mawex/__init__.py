"""mawex: distributed task scheduling on the Master -> Worker -> Executor model.

The public API::

    Client, AsyncClient      talk to masters (submit, get, result, cancel, state, results)
    LocalMaster              a master inside your own asyncio program
    Task, TaskResult, ...    value types
    MawexError, Rejected, NotLeader, TaskFailed, ...   errors you can catch
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mawex.errors import (
    ConfigError,
    ExecutorLoadError,
    FencedOut,
    JournalError,
    MawexError,
    NotFound,
    NotLeader,
    QueueFull,
    Rejected,
    ResultTimeout,
    TaskCancelled,
    TaskExpired,
    TaskFailed,
    TooLarge,
    Unauthorized,
    Unavailable,
)
from mawex.model import ResultEvent, Task, TaskResult, TaskStatus

if TYPE_CHECKING:
    from mawex.client import AsyncClient, BatchReceipt, Client, SubmitReceipt
    from mawex.local import LocalMaster

#: Names imported on first use: the client pulls in httpx (a tenth of a second), which
#: the processes that only run executors (``mawex executor``, the forked sandbox's
#: zygote and every task it forks) never need.
_CLIENT_NAMES = frozenset({"AsyncClient", "BatchReceipt", "Client", "SubmitReceipt"})

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "BatchReceipt",
    "Client",
    "ConfigError",
    "ExecutorLoadError",
    "FencedOut",
    "JournalError",
    "LocalMaster",
    "MawexError",
    "NotFound",
    "NotLeader",
    "QueueFull",
    "Rejected",
    "ResultEvent",
    "ResultTimeout",
    "SubmitReceipt",
    "Task",
    "TaskCancelled",
    "TaskExpired",
    "TaskFailed",
    "TaskResult",
    "TaskStatus",
    "TooLarge",
    "Unauthorized",
    "Unavailable",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name in _CLIENT_NAMES:
        import mawex.client

        value = getattr(mawex.client, name)
        globals()[name] = value
        return value
    # LocalMaster pulls in the server, engine and journals: load it only when asked for
    if name == "LocalMaster":
        from mawex.local import LocalMaster

        return LocalMaster
    raise AttributeError(f"module 'mawex' has no attribute {name!r}")
