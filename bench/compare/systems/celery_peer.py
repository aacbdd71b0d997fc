"""Celery on Redis (broker and result backend): 2 ``--pool solo`` workers, or prefork ``-c 2``.

The Redis result backend is Celery's fastest documented way to wait for a result:
``AsyncResult.get()`` subscribes to the task's pub/sub channel (``on_task_call``
subscribes as the task is sent) and reads the stored result if it is already
there, so nothing polls. Workers consume with ``BRPOP`` through kombu's event
loop; gossip, mingle and the event heartbeat are off (nothing here uses them).
"""

from __future__ import annotations

import gc
import os
import sys
import time
from typing import Any
from urllib.parse import parse_qsl

from celery import Celery as CeleryApp
from celery.result import AsyncResult

from systems.base import RESULT_TIMEOUT, SyncPeer, redis_url


def celery_url(url: str) -> str:
    """``url`` as Celery writes it: ``unix://PATH?db=N`` is ``redis+socket://PATH?virtual_host=N``."""
    if not url.startswith("unix://"):
        return url
    path, _, query = url.removeprefix("unix://").partition("?")
    return f"redis+socket://{path}?virtual_host={dict(parse_qsl(query)).get('db', '0')}"


app = CeleryApp("bench", broker=celery_url(redis_url()), backend=celery_url(redis_url()))
app.conf.update(
    task_default_queue="bench",
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=True,
)


@app.task(name="noop")
def noop() -> None:
    return None


@app.task(name="worker_pid")
def worker_pid(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


class Celery(SyncPeer[str]):
    """Handles are task ids: an ``AsyncResult`` uses the (thread-local) backend of its thread.

    Every ``AsyncResult`` is kept until :meth:`close`, as a program that wants its
    results would: ``AsyncResult.__del__`` unsubscribes, and when the garbage
    collector runs it inside another subscribe of the same thread, that thread
    deadlocks on its own pub/sub connection.
    """

    name = "celery"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.kept: list[AsyncResult] = []

    #: ``solo``: one worker process per task slot; ``prefork``: one worker, a pool of children.
    pool = "solo"

    def config(self) -> dict[str, Any]:
        n = self.settings.processes
        if self.pool == "solo":
            summary, worker = f"{n} workers x pool solo", f"{n} x celery worker --pool solo"
        else:
            summary = f"1 worker, prefork x {n}"
            worker = f"celery worker --pool prefork --concurrency {n}"
        return {
            "summary": summary,
            "worker": worker + " --without-gossip --without-mingle --without-heartbeat",
            "result": "redis result backend, AsyncResult.get() (pub/sub)",
        }

    def start_workers(self) -> list[int]:
        argv = [sys.executable, "-m", "celery", "-A", "systems.celery_peer", "worker"]
        argv += ["--queues", "bench", "--loglevel", self.settings.log_level.upper()]
        argv += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
        if self.pool == "solo":
            argv += ["--pool", "solo", "--hostname", "bench{i}@%h"]
            self.spawn_workers(argv, self.settings.processes)
        else:
            argv += ["--pool", "prefork", "--concurrency", str(self.settings.processes)]
            self.spawn_workers([*argv, "--hostname", "bench@%h"], 1)
        return self.wait_ready()

    def submit(self) -> str:
        result = noop.delay()
        self.kept.append(result)
        return str(result.id)

    def wait(self, handle: str) -> Any:
        result = AsyncResult(handle, app=app)
        self.kept.append(result)
        return result.get(timeout=RESULT_TIMEOUT)

    def probe(self, seconds: float) -> str:
        result = worker_pid.delay(seconds)
        self.kept.append(result)
        return str(result.id)

    def close(self) -> None:
        self.kept.clear()
        gc.collect()  # their __del__ unsubscribes: now, while the Redis is still there


class CeleryPrefork(Celery):
    name = "celery-prefork"
    pool = "prefork"
