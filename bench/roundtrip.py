"""Sequential round trips through ``Client.run`` / ``AsyncClient.run``, and what they cost.

One ``mawex master`` and one ``mawex worker`` process (``--pods`` pods, no-op executor)
on loopback; after ``--warmup`` unmeasured calls, ``--tasks`` calls of ``run()`` one
after another (submit and wait in one request). Prints p50/p99/mean in ms and the CPU
(user + system, all threads) each process spent per task. ``--busy-poll S`` runs the
master with ``--busy-poll S`` (it keeps polling S seconds after each turn);
``--client-busy-poll S`` makes the client with ``busy_poll=S`` (it awaits each
reply without sleeping for S seconds); ``--inline`` runs the worker with
``--sandbox-inline``; ``--unix`` has the worker and the client reach the master on
a Unix socket (``--listen unix:PATH``) instead of TCP.

``--timeline`` also prints where the time of a median round trip goes: each
process records timestamps at its steps (``bench/timeline_probe``; about a
microsecond per step), lined up on the machine's monotonic clock.

``--src DIR`` runs the master, the worker and the client from another checkout's
``src`` (``git worktree add /tmp/before <commit>``), so a change can be measured
against its parent with alternated runs on the same machine::

    for i in 1 2 3; do for src in /tmp/before .; do
      python bench/roundtrip.py --src $src --journal sqlite-normal
    done; done
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import collections
import importlib.util
import os
import sys
import tempfile
import time
import types
from collections.abc import Callable, Sequence
from pathlib import Path

from _common import (
    PROBE,
    JournalSetup,
    Processes,
    checkout_of,
    free_port,
    git_describe,
    percentile,
    wait_until,
)

GROUP = "rt"
EXECUTOR = "mawex.examples.demo:echo"
PROBE_DIR = Path(__file__).resolve().parent / "timeline_probe"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    add = parser.add_argument
    add("--journal", choices=("sqlite", "sqlite-normal", "postgresql"), default="sqlite")
    add("--tasks", type=int, default=3000, help="measured round trips")
    add("--warmup", type=int, default=200, help="unmeasured round trips first")
    add("--pods", type=int, default=32, help="mawex worker --concurrency")
    add("--client", choices=("sync", "async"), default="sync", help="Client or AsyncClient")
    add("--executor", default=EXECUTOR, help="the worker's executor (module:function)")
    add(
        "--busy-poll",
        type=float,
        default=0.0,
        help="mawex master --busy-poll: seconds it keeps polling after each turn",
    )
    add(
        "--client-busy-poll",
        type=float,
        default=0.0,
        help="the client's busy_poll: seconds it awaits each reply without sleeping",
    )
    add("--inline", action="store_true", help="mawex worker --sandbox-inline")
    add("--unix", action="store_true", help="the worker and the client on a Unix socket")
    add("--samples", default=None, help="write each call's start (s) and round trip (ms) here")
    add("--timeline", action="store_true", help="print where a median round trip's time goes")
    add("--src", default=None, help="another checkout (or its src/) to run instead of this one")
    pg_url = os.environ.get("MAWEX_BENCH_POSTGRESQL", "")
    add("--pg-url", default=pg_url, help="server of --journal postgresql (a fresh database)")
    return parser.parse_args(argv)


def measure(
    args: argparse.Namespace, url: str, cpu: Callable[[], list[float]]
) -> tuple[list[float], list[float], float]:
    """The round trips' seconds, the master's and worker's CPU and this process's CPU."""
    import mawex

    ids = (f"w{i}" for i in range(args.warmup))
    samples: list[float] = []
    clock = time.perf_counter
    starts: list[float] = []  # when each measured call began, for --samples
    # only when asked: a checkout older than the option (--src) runs without it
    polling = {"busy_poll": args.client_busy_poll} if args.client_busy_poll else {}
    if args.client == "sync":
        with mawex.Client(url, timeout=30, **polling) as client:
            for task_id in ids:
                client.run(GROUP, None, id=task_id, timeout=30)
            before, own = cpu(), time.process_time()
            for i in range(args.tasks):
                started = clock()
                client.run(GROUP, None, id=f"t{i}", timeout=30)
                samples.append(clock() - started)
                starts.append(started)
            after, own = cpu(), time.process_time() - own
    else:

        async def go() -> tuple[list[float], list[float], float]:
            async with mawex.AsyncClient(url, timeout=30, **polling) as client:
                for task_id in ids:
                    await client.run(GROUP, None, id=task_id, timeout=30)
                before, own = cpu(), time.process_time()
                for i in range(args.tasks):
                    started = clock()
                    await client.run(GROUP, None, id=f"t{i}", timeout=30)
                    samples.append(clock() - started)
                    starts.append(started)
                return before, cpu(), time.process_time() - own

        before, after, own = asyncio.run(go())
    if args.samples:
        with open(args.samples, "w") as out:
            for started, seconds in zip(starts, samples, strict=True):
                out.write(f"{started - starts[0]:.6f} {seconds * 1e3:.3f}\n")
    return samples, [b - a for a, b in zip(before, after, strict=True)], own


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    checkout = checkout_of(args.src)
    src = str(checkout / "src")
    sys.path.insert(0, src)
    env = {"PYTHONPATH": src}
    with tempfile.TemporaryDirectory(prefix="mawex-rt-") as tmp:
        workdir = Path(tmp)
        probe = None
        if args.timeline:
            (workdir / "timeline").mkdir()
            env = {"PYTHONPATH": f"{PROBE_DIR}{os.pathsep}{src}"}
            env["MAWEX_BENCH_TIMELINE"] = os.environ["MAWEX_BENCH_TIMELINE"] = str(
                workdir / "timeline"
            )
            probe = _load_probe()
        journal = JournalSetup(args.journal, workdir, *([args.pg_url] if args.pg_url else []))
        procs = Processes(workdir)
        journal.create()
        try:
            port = free_port()
            url = f"http://127.0.0.1:{port}"  # this script's own probes
            listen = f"127.0.0.1:{port}"
            served = url  # what the worker and the client use
            if args.unix:
                listen += f",unix:{workdir / 'master.sock'}"
                served = f"unix:{workdir / 'master.sock'}"
            master = procs.spawn(
                "master",
                [
                    *(sys.executable, "-m", "mawex", "master", "--journal", journal.url),
                    *("--listen", listen, "--log-level", "warning"),
                    *(("--busy-poll", str(args.busy_poll)) if args.busy_poll else ()),
                ],
                env,
            )
            import httpx

            def ready() -> bool:
                if not master.alive():
                    raise RuntimeError(f"the master exited:\n{master.tail()}")
                try:
                    return PROBE.get(f"{url}/readyz", timeout=1).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_until(ready, 60, "master leading")
            worker = procs.spawn(
                "worker",
                [
                    *(sys.executable, "-m", "mawex", "worker", args.executor, "--master", served),
                    *("--group", GROUP, "--pod", "p", "--concurrency", str(args.pods)),
                    *("--log-level", "warning"),
                    *(("--sandbox-inline",) if args.inline else ()),
                ],
                env,
            )

            def connected() -> bool:
                if not worker.alive():
                    raise RuntimeError(f"the worker exited:\n{worker.tail()}")
                workers = PROBE.get(f"{url}/v1/state", timeout=5).json()["workers"]
                return sum(w["status"] != "disconnected" for w in workers) >= args.pods

            wait_until(connected, 60, f"{args.pods} pods connected")
            samples, cpu, own = measure(
                args, served, lambda: [master.cpu_seconds(), worker.cpu_seconds()]
            )
        finally:
            procs.stop_all()
            journal.drop()
        if probe is not None:
            probe.write()
            steps = _timeline(workdir / "timeline", args.tasks)
    n = len(samples)
    client_poll = (
        f"client-busy-poll {args.client_busy_poll * 1e6:.0f} us " if args.client_busy_poll else ""
    )
    master_us, worker_us = (c / n * 1e6 for c in cpu)
    print(
        f"git {git_describe(checkout)} journal {args.journal} "
        f"client {args.client} pods {args.pods} busy-poll {args.busy_poll * 1e6:.0f} us "
        f"{client_poll}"
        f"{'inline ' if args.inline else ''}{'unix ' if args.unix else ''}tasks {n}: "
        f"p50 {percentile(samples, 0.5) * 1e3:.3f} ms p99 {percentile(samples, 0.99) * 1e3:.3f} "
        f"ms mean {sum(samples) / n * 1e3:.3f} ms | CPU per task: master {master_us:.0f} us, "
        f"worker {worker_us:.0f} us, client {own / n * 1e6:.0f} us"
    )
    if args.timeline:
        print(steps)
    return 0


def _load_probe() -> types.ModuleType:
    """The timeline probe, installed in this process (the client) too."""
    spec = importlib.util.spec_from_file_location("timeline_probe", PROBE_DIR / "sitecustomize.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _timeline(directory: Path, last: int) -> str:
    """The steps of the ``last`` round trips, as a table of median offsets (us)."""
    marks: list[tuple[int, str]] = []
    for path in directory.glob("*.tl"):
        for line in path.read_text().splitlines():
            step, ns = line.split()
            marks.append((int(ns), step))
    marks.sort()
    trips: list[tuple[int, int]] = []
    started = None
    for ns, step in marks:
        if step == "client.request":
            started = ns
        elif step == "client.reply" and started is not None:
            trips.append((started, ns))
            started = None
    trips = trips[-last:]
    times = [ns for ns, _ in marks]
    sequences: list[tuple[tuple[str, ...], list[float]]] = []
    for start, end in trips:
        seen: collections.Counter[str] = collections.Counter()
        order: list[str] = []
        at: list[float] = []
        for ns, step in marks[bisect.bisect_left(times, start) : bisect.bisect_right(times, end)]:
            seen[step] += 1
            order.append(f"{step}#{seen[step]}" if seen[step] > 1 else step)
            at.append((ns - start) / 1e3)
        sequences.append((tuple(order), at))
    # medians over the round trips whose steps came in the most common order
    common, count = collections.Counter(order for order, _ in sequences).most_common(1)[0]
    columns = list(zip(*(at for order, at in sequences if order == common), strict=True))
    lines = [
        f"steps of a round trip, median us from the client's request "
        f"(over the {count} of {len(trips)} round trips whose steps came in this order; "
        "#2: a step's second time):",
        f"  {'step':28} {'at':>8} {'since the last':>15}",
    ]
    previous = 0.0
    for key, column in zip(common, columns, strict=True):
        at_us = percentile(column, 0.5)
        lines.append(f"  {key:28} {at_us:8.1f} {at_us - previous:+15.1f}")
        previous = at_us
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
