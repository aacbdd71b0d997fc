"""Executors of the security tests (run by real workers, local or forked sandbox)."""

from __future__ import annotations

from typing import Any

from mawex.model import Task


def echo(task: Task) -> Any:
    return task.payload


def unserialisable(task: Task) -> Any:
    """A result JSON cannot carry."""
    return {"value": object()}


def huge_result(task: Task) -> str:
    return "x" * int(task.payload)


def huge_error(task: Task) -> None:
    raise RuntimeError("e" * int(task.payload))


def picky(task: Task) -> Any:
    """``"bad"``: a result JSON cannot carry; ``"nan"``: a float JSON has no word for."""
    if task.payload == "bad":
        return {"value": object()}
    if task.payload == "nan":
        return float("nan")
    if task.payload == "bytes":
        return b"\x00\xff"
    return task.payload
