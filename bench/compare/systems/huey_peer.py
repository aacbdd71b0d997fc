"""Huey on Redis: ``huey_consumer -k process -w 2``, results waited for with ``notify_result``.

``RedisHuey(blocking=True)`` makes workers wait on the queue with ``BRPOP`` (no
polling), and ``notify_result=True`` makes ``Result.get(blocking=True)`` wait with
``BLPOP`` on a per-task notification key instead of polling with back-off: huey's
documented low-latency result mode. ``store_none`` stores the no-op's ``None``.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from huey import RedisHuey
from huey.api import Result

from systems.base import RESULT_TIMEOUT, SyncPeer, redis_url

huey = RedisHuey(
    "bench", url=redis_url(), blocking=True, notify_result=True, store_none=True, results=True
)


@huey.task()
def noop() -> None:
    return None


@huey.task()
def worker_pid(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


class Huey(SyncPeer[Result]):
    name = "huey"

    def config(self) -> dict[str, Any]:
        n = self.settings.processes
        return {
            "summary": f"1 consumer, {n} worker processes x 1 task",
            "worker": f"huey_consumer -k process -w {n} (BRPOP)",
            "result": "Result.get(blocking=True) with notify_result=True (BLPOP)",
        }

    def start_workers(self) -> list[int]:
        argv = [sys.executable, "-m", "huey.bin.huey_consumer", "systems.huey_peer.huey"]
        argv += ["-k", "process", "-w", str(self.settings.processes), "-n", "-C"]
        if self.settings.log_level in ("warning", "error"):
            argv.append("-q")
        self.spawn_workers(argv, 1)
        return self.wait_ready()

    def submit(self) -> Result:
        return noop()

    def wait(self, handle: Result) -> Any:
        return handle.get(blocking=True, timeout=RESULT_TIMEOUT)

    def probe(self, seconds: float) -> Result:
        return worker_pid(seconds)
