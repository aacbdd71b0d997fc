"""The chaos tests' executor: :class:`mawex.examples.demo.Record` plus a line when a run starts.

``Record`` writes one line per run when it ends, so a run whose worker was
SIGKILLed leaves no trace. :class:`StartRecord` first appends
``{"event": "start", "id", "group", "attempt", "pod", "pid", "start"}`` to the
same file, then lets ``Record`` run the task and write its usual line
(``{"id", "group", "attempt", "pod", "start", "end"}``). The checker pairs them by
``(group, id, attempt)`` and bounds a run without an end line by the time its
process (``pid``) was killed.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from mawex.examples.demo import Record
from mawex.model import Task


def append_line(path: str, line: dict[str, Any]) -> None:
    """Append one JSON line with a single O_APPEND write (atomic between processes)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(line) + "\n").encode())
    finally:
        os.close(fd)


class StartRecord(Record):
    """``Record`` that also notes each run's start (see the module docstring)."""

    def __call__(self, task: Task) -> dict[str, Any]:
        append_line(
            self.path,
            {
                "event": "start",
                "id": task.id,
                "group": task.group,
                "attempt": task.attempt,
                "pod": self.pod,
                "pid": os.getpid(),
                "start": time.time(),
            },
        )
        return super().__call__(task)
