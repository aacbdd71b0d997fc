"""RQ: 2 ``rq worker`` processes, ``SimpleWorker`` (in-process) or the forking ``Worker``.

Workers wait on the queue with ``BLPOP``. Results: ``job.latest_result(timeout=…)``
blocks on the job's result stream (``XREAD BLOCK``), RQ's documented way to wait
for a result without polling. ``rq-fork`` is RQ's default worker, which forks a
work horse per job.
"""

from __future__ import annotations

import os
import time
from typing import Any

from redis import Redis
from rq import Queue
from rq.job import Job

from systems.base import RESULT_TIMEOUT, SyncPeer


def noop() -> None:
    return None


def worker_pid(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


class Rq(SyncPeer[Job]):
    name = "rq"
    worker_class = "rq.worker.SimpleWorker"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.queue = Queue("bench", connection=Redis.from_url(self.settings.redis_url))

    def config(self) -> dict[str, Any]:
        n, cls = self.settings.processes, self.worker_class.rsplit(".", 1)[1]
        horse = ", a forked work horse per job" if cls == "Worker" else ""
        return {
            "summary": f"{n} x {cls}{horse}",
            "worker": f"{n} x rq worker --worker-class {self.worker_class} (BLPOP)",
            "result": "job.latest_result(timeout=…) (XREAD BLOCK)",
        }

    def start_workers(self) -> list[int]:
        argv = [self.tool("rq"), "worker", "--url", self.settings.redis_url, "--path", "."]
        argv += ["--worker-class", self.worker_class, "--name", f"{self.name}-{{i}}"]
        argv += ["--logging_level", self.settings.log_level.upper(), "bench"]
        self.spawn_workers(argv, self.settings.processes)
        return self.wait_ready()

    def wait_ready(self) -> list[int]:
        if self.worker_class.endswith("SimpleWorker"):
            return super().wait_ready()
        # A forking worker runs each job in a new child: probe PIDs say nothing, so
        # wait for every worker to register, then for one probe round trip.
        from rq import Worker

        deadline = time.monotonic() + 90
        while len(Worker.all(queue=self.queue)) < self.settings.processes:
            self.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError("rq workers did not register")
            time.sleep(0.05)
        self.wait(self.probe(0))
        return [p.pid for p in self.procs.procs]

    def submit(self) -> Job:
        return self.queue.enqueue(noop)

    def wait(self, handle: Job) -> Any:
        result = handle.latest_result(timeout=int(RESULT_TIMEOUT))
        if result is None or result.type != result.Type.SUCCESSFUL:
            raise RuntimeError(f"rq job {handle.id}: {result and result.exc_string}")
        return result.return_value

    def probe(self, seconds: float) -> Job:
        return self.queue.enqueue(worker_pid, seconds)


class RqFork(Rq):
    name = "rq-fork"
    worker_class = "rq.worker.Worker"
