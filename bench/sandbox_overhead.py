"""Per-task overhead of the sandboxes: local vs forked (warm) vs forked (spawn).

Runs ``--tasks`` no-op tasks (``mawex.examples.demo:echo`` on a small payload) one
after the other directly through the Sandbox API (``start()`` once, then
``run()`` per task, no master or worker involved), after ``--warmup`` untimed
ones, and prints one line per figure::

    raw-fork        median 1.41 ms  p99 2.10 ms  (os.fork + os._exit + waitpid, the floor)
    local           median 0.12 ms  p99 0.40 ms  (n=500)
    forked-warm     median 2.90 ms  p99 6.00 ms  overhead +2.78 ms over local (n=500)
    forked-spawn    median 45.0 ms  p99 80.0 ms  overhead +44.9 ms over local (n=50)

``overhead`` is the difference of the medians. The spawn mode starts a fresh
interpreter per task, so it runs ``--spawn-tasks`` tasks only. Other work on the
machine inflates every figure: compare figures of one run.

Run: ``.venv/bin/python bench/sandbox_overhead.py [--tasks 500] [--spawn-tasks 50]
[--json out.json]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from typing import Any

from mawex.model import Task
from mawex.sandbox import create_sandbox

EXECUTOR = "mawex.examples.demo:echo"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


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


async def run_sandbox(kind: str, n: int, warmup: int, **options: Any) -> list[float]:
    sandbox = create_sandbox(kind, EXECUTOR, **options)
    await sandbox.start()
    times = []
    try:
        for i in range(warmup + n):
            task = Task(id=f"t{i}", group="bench", payload={"i": i})
            start = time.perf_counter()
            outcome = await sandbox.run(task, 30.0)
            elapsed = time.perf_counter() - start
            if not outcome.ok:
                raise SystemExit(f"{kind} {options}: task failed: {outcome.error}")
            if i >= warmup:
                times.append(elapsed)
    finally:
        await sandbox.close()
    return times


def figure(name: str, times: list[float], baseline: float | None, note: str) -> dict[str, Any]:
    median = statistics.median(times) * 1000
    p99 = percentile(times, 0.99) * 1000
    extra = f"  overhead {median - baseline:+.2f} ms over local" if baseline is not None else ""
    print(f"{name:<15} median {median:.2f} ms  p99 {p99:.2f} ms{extra}  ({note}, n={len(times)})")
    return {"name": name, "median_ms": median, "p99_ms": p99, "n": len(times)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=500, help="tasks per figure")
    parser.add_argument("--spawn-tasks", type=int, default=50, help="tasks of the spawn mode")
    parser.add_argument("--warmup", type=int, default=20, help="untimed tasks first")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()

    results = [figure("raw-fork", raw_fork(args.tasks), None, "os.fork + os._exit + waitpid")]
    local = await run_sandbox("local", args.tasks, args.warmup)
    results.append(figure("local", local, None, "in the worker process, a thread per task"))
    base = statistics.median(local) * 1000
    warm = await run_sandbox("forked", args.tasks, args.warmup, mode="warm")
    results.append(figure("forked-warm", warm, base, "a zygote forks one child per task"))
    spawn = await run_sandbox("forked", args.spawn_tasks, min(args.warmup, 3), mode="spawn")
    results.append(figure("forked-spawn", spawn, base, "a fresh interpreter per task"))
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"figures": results, "loadavg": load}, fh, indent=2)


if __name__ == "__main__":
    asyncio.run(main())
