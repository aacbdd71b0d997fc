"""Executors the simulated Job containers run (the "image" is this checkout, tests included)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from mawex.model import Task


def echo(task: Task) -> Any:
    """Return the payload."""
    return task.payload


def boom(task: Task) -> None:
    """Raise, to show the executor's own error comes back."""
    raise ValueError(f"boom {task.id}")


def hog(task: Task) -> int:
    """Allocate ``payload["mb"]`` MiB, touch every page, and hold it for a while."""
    blocks = [bytearray(1 << 20) for _ in range(int(task.payload["mb"]))]
    for block in blocks:
        block[::4096] = b"x" * len(block[::4096])
    time.sleep(float(task.payload.get("hold", 5)))
    return len(blocks)


def sleepy(task: Task) -> str:
    """Sleep ``payload["s"]`` seconds."""
    time.sleep(float(task.payload["s"]))
    return "slept"


def crash(task: Task) -> None:
    """Exit the process at once, without reporting anything."""
    os._exit(7)


def environment(task: Task) -> dict[str, Any]:
    """The environment variables and mounted files the task asks about."""
    mount = os.environ.get("MAWEX_MOUNT_PATH")
    files = {}
    if mount and Path(mount).is_dir():
        files = {p.name: p.read_text() for p in sorted(Path(mount).iterdir()) if p.is_file()}
    return {
        "env": {name: os.environ.get(name) for name in task.payload["names"]},
        "mount": mount,
        "files": files,
    }


class Greeter:
    """A class executor built with the worker's --arg pairs."""

    def __init__(self, greeting: str = "hello") -> None:
        self.greeting = greeting

    def __call__(self, task: Task) -> str:
        return f"{self.greeting} {task.payload}"


def multi(task: Task) -> Any:
    """Dispatch on ``payload["do"]``: echo, boom, hog, sleepy."""
    action = {"echo": echo, "boom": boom, "hog": hog, "sleepy": sleepy}[task.payload["do"]]
    return action(task)
