"""Dramatiq on Redis: ``dramatiq --processes 2 --threads T``, results from the Results middleware.

The Redis broker's consumer polls its queue, backing off up to the worker timeout
(1 s by default) when idle; ``dramatiq_worker_timeout`` (milliseconds, the worker's
``worker_timeout``) caps that back-off, so ``--dramatiq-poll-ms 1`` polls every
millisecond at most. Results: ``Results(backend=RedisBackend())`` with
``store_results=True``, waited for with ``get_result(block=True)`` (``BRPOPLPUSH``).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.message import Message
from dramatiq.results import Results
from dramatiq.results.backends.redis import RedisBackend

from systems.base import RESULT_TIMEOUT, SyncPeer, redis_url

backend = RedisBackend(url=redis_url())
broker = RedisBroker(url=redis_url())
broker.add_middleware(Results(backend=backend))
dramatiq.set_broker(broker)


@dramatiq.actor(store_results=True, queue_name="bench", max_retries=0)
def noop() -> None:
    return None


@dramatiq.actor(store_results=True, queue_name="bench", max_retries=0)
def worker_pid(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


class Dramatiq(SyncPeer[Message[Any]]):
    name = "dramatiq"

    @property
    def threads(self) -> int:
        return int(self.settings.options.get("dramatiq_threads", 8))

    @property
    def poll_ms(self) -> int:
        return int(self.settings.options.get("dramatiq_poll_ms", 1))

    def config(self) -> dict[str, Any]:
        n = self.settings.processes
        return {
            "summary": f"{n} processes x {self.threads} threads, poll ≤ {self.poll_ms} ms",
            "worker": f"dramatiq --processes {n} --threads {self.threads}, "
            f"dramatiq_worker_timeout={self.poll_ms}",
            "result": "Results middleware, RedisBackend, get_result(block=True) (BRPOPLPUSH)",
        }

    def start_workers(self) -> list[int]:
        argv = [sys.executable, "-m", "dramatiq", "systems.dramatiq_peer:broker"]
        argv += ["--processes", str(self.settings.processes), "--threads", str(self.threads)]
        argv += ["--queues", "bench", "--worker-shutdown-timeout", "5000"]
        self.spawn_workers(argv, 1, {"dramatiq_worker_timeout": str(self.poll_ms)})
        return self.wait_ready()

    def submit(self) -> Message[Any]:
        return noop.send()

    def wait(self, handle: Message[Any]) -> Any:
        return backend.get_result(handle, block=True, timeout=int(RESULT_TIMEOUT * 1000))

    def probe(self, seconds: float) -> Message[Any]:
        return worker_pid.send(seconds)
