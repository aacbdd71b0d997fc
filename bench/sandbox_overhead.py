"""Per-task overhead of the sandboxes: local vs forked (warm) vs forked (spawn).

Runs ``--tasks`` no-op tasks (``mawex.examples.demo:echo`` on a small payload) one
after the other directly through the Sandbox API (``start()`` once, then
``run()`` per task, no master or worker involved), after ``--warmup`` untimed
ones, and prints one line per figure::

    raw-fork      median   1.41 ms  p99    2.10 ms  (os.fork + os._exit + waitpid, n=500)
    local         median   0.12 ms  p99    0.40 ms  cpu 0.20 ms/task  (..., n=500)
    forked-warm   median   2.90 ms  p99    6.00 ms  overhead +2.78 ms over local  cpu ...
    forked-spawn  median  45.00 ms  p99   80.00 ms  overhead +44.9 ms over local  cpu ...

``overhead`` is the difference of the medians; ``cpu`` is the CPU time per task of
every process involved (the benchmark's own, the zygote's and its children's), a
figure other work on the machine disturbs less than wall times. The spawn mode
starts a fresh interpreter per task, so it runs ``--spawn-tasks`` tasks only.
Other work on the machine inflates every figure: compare figures of one run.

Run: ``.venv/bin/python bench/sandbox_overhead.py [--tasks 500] [--spawn-tasks 50]
[--json out.json]``. On a machine shared with other work, ``chrt -f 10`` in front
(as root) gives the benchmark and the processes it starts real-time priority, so
the figures show the sandbox's own cost rather than the queue for a CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import time
from typing import Any

from _common import percentile

from mawex.model import Task
from mawex.sandbox import create_sandbox

EXECUTOR = "mawex.examples.demo:echo"


def raw_fork(n: int) -> list[float]:
    """The floor: fork a child that exits at once, and reap it."""
    times = []
    for _ in range(n):
        start = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        times.append(time.perf_counter() - start)
    return times


def cpu_seconds(pid: int | None) -> float:
    """CPU time of this process, plus that of ``pid`` and its reaped children (the zygote's)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    total = usage.ru_utime + usage.ru_stime
    if pid is not None:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        total += sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    return total


async def run_sandbox(kind: str, n: int, warmup: int, **options: Any) -> tuple[list[float], float]:
    """Per-task wall times, and the CPU time per task of every process involved."""
    sandbox = create_sandbox(kind, EXECUTOR, **options)
    await sandbox.start()
    times = []
    zygote = getattr(sandbox, "zygote_pid", None)
    try:
        for i in range(warmup + n):
            if i == warmup:
                cpu = cpu_seconds(zygote)
            task = Task(id=f"t{i}", group="bench", payload={"i": i})
            start = time.perf_counter()
            outcome = await sandbox.run(task, 30.0)
            elapsed = time.perf_counter() - start
            if not outcome.ok:
                raise SystemExit(f"{kind} {options}: task failed: {outcome.error}")
            if i >= warmup:
                times.append(elapsed)
        cpu = (cpu_seconds(zygote) - cpu) / n
    finally:
        await sandbox.close()
    return times, cpu


def figure(
    name: str, times: list[float], baseline: float | None, note: str, cpu: float | None = None
) -> dict[str, Any]:
    median = statistics.median(times) * 1000
    p99 = percentile(times, 0.99) * 1000
    extra = f"  overhead {median - baseline:+.2f} ms over local" if baseline is not None else ""
    if cpu is not None:
        extra += f"  cpu {cpu * 1000:.2f} ms/task"
    print(f"{name:<13} median {median:6.2f} ms  p99 {p99:7.2f} ms{extra}  ({note}, n={len(times)})")
    return {"name": name, "median_ms": median, "p99_ms": p99, "n": len(times), "cpu_s": cpu}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=500, help="tasks per figure")
    parser.add_argument("--spawn-tasks", type=int, default=50, help="tasks of the spawn mode")
    parser.add_argument("--warmup", type=int, default=20, help="untimed tasks first")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()

    results = [figure("raw-fork", raw_fork(args.tasks), None, "os.fork + os._exit + waitpid")]
    local, cpu = await run_sandbox("local", args.tasks, args.warmup)
    results.append(figure("local", local, None, "in the worker, on its executor thread", cpu))
    base = statistics.median(local) * 1000
    warm, cpu = await run_sandbox("forked", args.tasks, args.warmup, mode="warm")
    results.append(figure("forked-warm", warm, base, "one forked process per task", cpu))
    spawn, cpu = await run_sandbox("forked", args.spawn_tasks, min(args.warmup, 3), mode="spawn")
    results.append(figure("forked-spawn", spawn, base, "a fresh interpreter per task", cpu))
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs")
    if args.json:
        with open(args.json, "w") as fh:  # noqa: ASYNC230 - once, at the end
            json.dump({"figures": results, "loadavg": load}, fh, indent=2)


if __name__ == "__main__":
    asyncio.run(main())
