"""Executors that misbehave on purpose, for the forked sandbox tests.

They are loaded by reference (``tests.sandbox.executors:<name>``) in the sandbox's
processes, which start in the repository root, so ``tests`` is importable there.
Executors that must tell the test their pid (or a grandchild's) write it to
``payload["pid_file"]``.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import subprocess
import sys
import time
from typing import Any

from mawex.model import Task

HERE = "tests.sandbox.executors"


def _note_pid(task: Task, pid: int | None = None) -> None:
    path = task.payload.get("pid_file") if isinstance(task.payload, dict) else None
    if path:
        with open(f"{path}.tmp", "w") as fh:
            fh.write(str(pid or os.getpid()))
        os.replace(f"{path}.tmp", path)


def echo(task: Task) -> Any:
    return task.payload


def thread_name(task: Task) -> str:
    """The name of the thread that ran the task (``--sandbox-inline``: the loop's)."""
    import threading

    return threading.current_thread().name


def whoami(task: Task) -> dict[str, Any]:
    """Where the task ran: pid, parent, process group, session, cwd, environment."""
    return {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "pgid": os.getpgrp(),
        "sid": os.getsid(0),
        "cwd": os.getcwd(),
        "env": dict(os.environ),
        "attempt": task.attempt,
    }


async def async_whoami(task: Task) -> dict[str, Any]:
    await asyncio.sleep(0)
    return {"pid": os.getpid(), "payload": task.payload}


class Configured:
    """A class executor: built once per sandbox (per zygote) with the worker's --args."""

    def __init__(self, greeting: str, punctuation: str = "!") -> None:
        self.greeting = greeting
        self.punctuation = punctuation
        self.built_in = os.getpid()

    def __call__(self, task: Task) -> dict[str, Any]:
        return {
            "text": f"{self.greeting} {task.payload}{self.punctuation}",
            "built_in": self.built_in,
            "pid": os.getpid(),
        }


def raises(task: Task) -> None:
    print("about to fail", flush=True)
    raise ValueError(f"bad input for {task.id}")


def exits_3(task: Task) -> None:
    print("leaving with 3", file=sys.stderr, flush=True)
    os._exit(3)


def system_exit(task: Task) -> None:
    sys.exit(7)


def segfault(task: Task) -> None:
    print("about to crash", file=sys.stderr, flush=True)
    ctypes.string_at(0)


def kills_itself(task: Task) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def aborts(task: Task) -> None:
    os.abort()


def not_json(task: Task) -> object:
    return {"when": object()}


def spins(task: Task) -> None:
    _note_pid(task)
    while True:
        pass


def sleeps(task: Task) -> dict[str, float]:
    _note_pid(task)
    seconds = float(task.payload.get("seconds", 60)) if isinstance(task.payload, dict) else 60.0
    time.sleep(seconds)
    return {"slept": seconds}


def spawns_grandchild(task: Task) -> None:
    """Start a grandchild that sleeps (in the same process group), then hang."""
    grandchild = subprocess.Popen(["sleep", "300"])
    _note_pid(task, grandchild.pid)
    if isinstance(task.payload, dict) and task.payload.get("return"):
        return
    time.sleep(300)


def hogs_memory(task: Task) -> int:
    """Allocate payload["mb"] MB and touch it."""
    mb = int(task.payload["mb"])
    blocks = [bytearray(1024 * 1024) for _ in range(mb)]
    return len(blocks)


def chatty(task: Task) -> None:
    """Print far more than the output limit, then fail."""
    for i in range(20000):
        print(f"line {i} of chatter")
    print("the last words", file=sys.stderr)
    raise RuntimeError("chatty failed")


def reads_mount(task: Task) -> dict[str, Any]:
    base = os.environ["MAWEX_MOUNT_PATH"]
    with open(os.path.join(base, "config.txt")) as fh:
        via_env = fh.read()
    with open("config.txt") as fh:  # the mount path is also the working directory
        via_cwd = fh.read()
    return {"env": via_env, "cwd": via_cwd, "dir": os.getcwd()}


def lingering_thread(task: Task) -> str:
    """Return while a non-daemon thread still runs: the process must end anyway."""
    import threading

    threading.Thread(target=time.sleep, args=(300,)).start()
    return "done"


_THREAD_STARTED = False


class StartsThreads:
    """Its construction starts a thread: forking after that is unsafe (auto mode spawns)."""

    def __init__(self) -> None:
        import threading

        self.thread = threading.Thread(target=time.sleep, args=(3600,), daemon=True)
        self.thread.start()

    def __call__(self, task: Task) -> dict[str, Any]:
        return {"pid": os.getpid(), "ppid": os.getppid()}


class Behaves:
    """For end-to-end tests: records each run, then does what ``payload["do"]`` says.

    Built with ``--arg path=FILE --arg pod=P``. Appends one JSON line when a run
    starts (``phase: start``, with the process's pid) and one when it ends
    (``phase: end``), each with one ``O_APPEND`` write. ``do`` is ``ok`` (sleep
    ``seconds``, default 0.02, and return), ``segfault`` (crash once the end is
    recorded), ``exit`` (``os._exit(5)``), or ``hang`` (start a sleeping grandchild,
    record its pid, and never return).
    """

    def __init__(self, path: str, pod: str) -> None:
        self.path = path
        self.pod = pod

    def _write(self, task: Task, phase: str, **extra: Any) -> None:
        import json

        line = {
            "id": task.id,
            "group": task.group,
            "attempt": task.attempt,
            "pod": self.pod,
            "phase": phase,
            "time": time.time(),
            "pid": os.getpid(),
            **extra,
        }
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(line) + "\n").encode())
        finally:
            os.close(fd)

    def __call__(self, task: Task) -> dict[str, Any]:
        payload = task.payload if isinstance(task.payload, dict) else {}
        do = payload.get("do", "ok")
        self._write(task, "start")
        if do == "segfault":
            self._write(task, "end")
            ctypes.string_at(0)
        if do == "exit":
            self._write(task, "end")
            os._exit(5)
        if do == "hang":
            grandchild = subprocess.Popen(["sleep", "300"])
            self._write(task, "hang", grandchild=grandchild.pid)
            time.sleep(3600)
        time.sleep(float(payload.get("seconds", 0.02)))
        self._write(task, "end")
        return {"pid": os.getpid(), "pod": self.pod}
