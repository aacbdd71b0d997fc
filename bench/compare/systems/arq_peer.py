"""arq on Redis: 2 ``arq`` worker processes (asyncio, ``max_jobs`` 10 each), 1 ms polling.

arq polls: a worker reads its queue (a sorted set) every ``poll_delay`` seconds
(0.5 by default) and ``Job.result()`` reads the result every ``poll_delay`` (0.5 by
default too). Both are set to ``--arq-poll-ms`` (1 ms by default), arq's documented
knobs for latency. The client is ``ArqRedis.enqueue_job`` on one event loop.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, ClassVar

from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.jobs import Job

from systems.base import RESULT_TIMEOUT, AsyncSystem, Settings, redis_url, wait_for_pids

POLL_ENV = "MAWEX_COMPARE_ARQ_POLL_MS"

#: ``arq --custom-log-dict``: the harness's log level instead of arq's per-job INFO lines.
LOG_CONFIG = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stream": {"class": "logging.StreamHandler"}},
    "loggers": {
        "arq": {
            "handlers": ["stream"],
            "level": os.environ.get("MAWEX_COMPARE_LOG_LEVEL", "WARNING").upper(),
        }
    },
}


async def noop(ctx: dict[str, Any]) -> None:
    return None


async def worker_pid(ctx: dict[str, Any], seconds: float) -> int:
    await asyncio.sleep(seconds)
    return os.getpid()


class WorkerSettings:
    """``arq systems.arq_peer.WorkerSettings``."""

    functions: ClassVar[list[Any]] = [noop, worker_pid]
    redis_settings = RedisSettings.from_dsn(redis_url())
    poll_delay = int(os.environ.get(POLL_ENV, "1")) / 1000
    max_jobs = 10


class Arq(AsyncSystem):
    name = "arq"

    def __init__(self, settings: Settings, procs: Any) -> None:
        super().__init__(settings, procs)
        self.pool: ArqRedis = self.run(create_pool(RedisSettings.from_dsn(settings.redis_url)))

    @property
    def poll_s(self) -> float:
        return int(self.settings.options.get("arq_poll_ms", 1)) / 1000

    def config(self) -> dict[str, Any]:
        n, ms = self.settings.processes, self.poll_s * 1000
        return {
            "summary": f"{n} workers x max_jobs {WorkerSettings.max_jobs}, poll {ms:g} ms",
            "worker": f"{n} x arq WorkerSettings (poll_delay={ms:g} ms)",
            "result": f"Job.result(poll_delay={ms:g} ms)",
        }

    def start_workers(self) -> list[int]:
        argv = [self.tool("arq"), "systems.arq_peer.WorkerSettings"]
        argv += ["--custom-log-dict", "systems.arq_peer.LOG_CONFIG"]
        env = {
            POLL_ENV: str(int(self.poll_s * 1000)),
            "MAWEX_COMPARE_LOG_LEVEL": self.settings.log_level,
        }
        self.spawn_workers(argv, self.settings.processes, env)
        return wait_for_pids(self.settings.processes, self._probe_round, self.check_alive)

    def _probe_round(self, size: int) -> list[int]:
        async def round_() -> list[int]:
            jobs = [await self._enqueue("worker_pid", 0.05) for _ in range(size)]
            return [int(await self._result(job)) for job in jobs]

        pids: list[int] = self.run(round_())
        return pids

    async def _enqueue(self, function: str, *args: Any) -> Job:
        job = await self.pool.enqueue_job(function, *args)
        if job is None:
            raise RuntimeError("arq refused the job (duplicate id)")
        return job

    async def _result(self, job: Job) -> Any:
        return await job.result(timeout=RESULT_TIMEOUT, poll_delay=self.poll_s)

    def enqueue_only(self, count: int, tag: str) -> float:
        async def go() -> float:
            started = time.perf_counter()
            for _ in range(count):
                await self._enqueue("noop")
            return time.perf_counter() - started

        seconds: float = self.run(go())
        return seconds

    def throughput(self, count: int, tag: str) -> float:
        async def go() -> float:
            jobs: asyncio.Queue[Job] = asyncio.Queue()

            async def collect() -> float:
                for _ in range(count):
                    await self._result(await jobs.get())
                return time.perf_counter()

            started = time.perf_counter()
            collector = asyncio.create_task(collect())
            for _ in range(count):
                jobs.put_nowait(await self._enqueue("noop"))
            return await collector - started

        seconds: float = self.run(go())
        return seconds

    def round_trips(self, count: int, tag: str) -> list[float]:
        async def go() -> list[float]:
            clock, samples = time.perf_counter, []
            for _ in range(count):
                started = clock()
                await self._result(await self._enqueue("noop"))
                samples.append(clock() - started)
            return samples

        samples: list[float] = self.run(go())
        return samples

    def close(self) -> None:
        self.run(self.pool.aclose())
        super().close()
