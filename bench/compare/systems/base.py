"""What every system of the comparison implements, and the loops the Redis peers share.

A system starts its own processes through :class:`Processes` (``bench/_common.py``),
which stops them by PID (or by the process group a peer's worker CLI leads) even
when a phase fails. The measurement loops are written once here: a peer only says
how to submit one no-op task and how to wait for its result.
"""

from __future__ import annotations

import abc
import asyncio
import os
import queue
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from _common import Processes

H = TypeVar("H")

#: Where run.py lives: the peers' worker processes import ``systems.*`` from here.
COMPARE_DIR = Path(__file__).resolve().parent.parent
#: Environment variable that tells a peer's worker processes which Redis database to use.
REDIS_ENV = "MAWEX_COMPARE_REDIS_URL"
#: Seconds to wait for one result before calling the task lost.
RESULT_TIMEOUT = 60.0
#: Seconds for every worker process to come up.
READY_TIMEOUT = 90.0


def redis_url() -> str:
    """The Redis URL (with its database) the harness gave this process."""
    return os.environ.get(REDIS_ENV, "redis://127.0.0.1:6379/9")


@dataclass(frozen=True)
class Settings:
    """What every system is told (from the command line)."""

    redis_url: str
    #: Worker OS processes per system.
    processes: int
    #: Log level of every worker and master (``warning``: no per-task log lines anywhere).
    log_level: str
    workdir: Path
    options: dict[str, Any]


class System(abc.ABC):
    """One system under test: its processes, its client, and the three workloads."""

    #: The name in ``--systems`` and in the table.
    name: str = ""

    def __init__(self, settings: Settings, procs: Processes) -> None:
        self.settings = settings
        self.procs = procs

    @abc.abstractmethod
    def config(self) -> dict[str, Any]:
        """How it is set up: processes, concurrency, broker, result mode (for the output)."""

    def start(self) -> None:  # noqa: B027 - most systems need no server of their own
        """Start what clients submit to (the peers' Redis is already running)."""

    @abc.abstractmethod
    def start_workers(self) -> list[int]:
        """Start the worker processes and return once every one serves (their PIDs)."""

    @abc.abstractmethod
    def enqueue_only(self, count: int, tag: str) -> float:
        """Submit ``count`` tasks that nothing consumes; the seconds it took."""

    @abc.abstractmethod
    def throughput(self, count: int, tag: str) -> float:
        """Submit ``count`` tasks while collecting their results; seconds to the last one."""

    @abc.abstractmethod
    def round_trips(self, count: int, tag: str) -> list[float]:
        """``count`` sequential submit-then-wait round trips; each one's seconds."""

    def close(self) -> None:  # noqa: B027 - clients without connections to close
        """Release the client (the harness stops the processes next)."""

    def stop(self) -> None:  # noqa: B027 - nothing outside the processes to clean up
        """After the processes have stopped: drop what :meth:`start` created."""

    # -- helpers --------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """Environment of a peer's worker processes: Redis URL and ``systems`` importable."""
        bench = str(COMPARE_DIR.parent)
        path = os.pathsep.join([str(COMPARE_DIR), bench, os.environ.get("PYTHONPATH", "")])
        return {REDIS_ENV: self.settings.redis_url, "PYTHONPATH": path.rstrip(os.pathsep)}

    def tool(self, name: str) -> str:
        """A console script installed next to this interpreter (the compare venv's)."""
        return str(Path(sys.executable).with_name(name))

    def spawn_workers(self, argv: list[str], count: int, env: dict[str, str] | None = None) -> None:
        """Start ``count`` copies of ``argv`` (``{i}`` is replaced by 1..count), each a group."""
        for i in range(1, count + 1):
            args = [a.replace("{i}", str(i)) for a in argv]
            self.procs.spawn(
                f"{self.name}-worker-{i}",
                args,
                {**self.env(), **(env or {})},
                cwd=COMPARE_DIR,
                group=True,
            )

    def check_alive(self) -> None:
        """Raise with the log tail of any child that has exited."""
        for proc in self.procs.procs:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.tail()}")


class SyncPeer(System, Generic[H]):
    """A peer with a blocking client: one thread submits, another collects results.

    ``submit`` enqueues one no-op task with the peer's own client call and returns
    a handle; ``wait`` blocks until that task's result is there, with the peer's
    fastest documented way of waiting. ``probe`` submits a task that sleeps and
    returns its worker's PID (used to see every worker process serving).
    """

    @abc.abstractmethod
    def submit(self) -> H: ...

    @abc.abstractmethod
    def wait(self, handle: H) -> Any: ...

    @abc.abstractmethod
    def probe(self, seconds: float) -> H: ...

    def enqueue_only(self, count: int, tag: str) -> float:
        submit = self.submit
        started = time.perf_counter()
        for _ in range(count):
            submit()
        return time.perf_counter() - started

    def throughput(self, count: int, tag: str) -> float:
        handles: queue.SimpleQueue[H] = queue.SimpleQueue()
        done: list[float] = []
        failed: list[BaseException] = []

        def collect() -> None:
            try:
                for _ in range(count):
                    self.wait(handles.get(timeout=RESULT_TIMEOUT))
                done.append(time.perf_counter())
            except BaseException as exc:
                failed.append(exc)

        collector = threading.Thread(target=collect, name="collector", daemon=True)
        submit, put = self.submit, handles.put
        started = time.perf_counter()
        collector.start()
        for _ in range(count):
            put(submit())
        collector.join()
        if failed:
            raise RuntimeError(f"collecting results: {failed[0]!r}") from failed[0]
        return done[0] - started

    def round_trips(self, count: int, tag: str) -> list[float]:
        samples = []
        submit, wait, clock = self.submit, self.wait, time.perf_counter
        for _ in range(count):
            started = clock()
            wait(submit())
            samples.append(clock() - started)
        return samples

    def wait_ready(self) -> list[int]:
        """Probe until every worker process has answered (not a sleep: real tasks)."""
        return wait_for_pids(self.settings.processes, self._probe_round, self.check_alive)

    def _probe_round(self, size: int) -> list[int]:
        handles = [self.probe(0.05) for _ in range(size)]
        return [int(self.wait(h)) for h in handles]


def wait_for_pids(
    expected: int, probe_round: Callable[[int], list[int]], check_alive: Callable[[], None]
) -> list[int]:
    """Run rounds of sleeping probe tasks until ``expected`` distinct worker PIDs answered."""
    seen: set[int] = set()
    deadline = time.monotonic() + READY_TIMEOUT
    while len(seen) < expected:
        check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(seen)} of {expected} worker processes answered")
        seen.update(probe_round(2 * expected))
    return sorted(seen)


class AsyncSystem(System):
    """A system with an asyncio client, run on one event loop of its own.

    The loop is the stdlib's unless ``--client-loop uvloop`` (option ``client_loop``).
    """

    def __init__(self, settings: Settings, procs: Processes) -> None:
        super().__init__(settings, procs)
        if settings.options.get("client_loop") == "uvloop":
            import uvloop

            self._runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
        else:
            self._runner = asyncio.Runner()

    def run(self, coro: Awaitable[Any]) -> Any:
        async def wrapper() -> Any:
            return await coro

        return self._runner.run(wrapper())

    def close(self) -> None:
        self._runner.close()
