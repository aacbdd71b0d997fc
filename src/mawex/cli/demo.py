"""``mawex demo``: a complete local cluster, a leader failover, and a summary."""

from __future__ import annotations

import signal
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import click

from mawex.cli.options import option

EXECUTOR = "mawex.examples.demo:Demo"
GROUPS = ("etl", "reports")
PODS = ("pod-1", "pod-2")


@click.command()
@option(
    "--tasks",
    "count",
    type=click.IntRange(10, 1_000_000),
    default=400,
    help="How many tasks to submit.",
)
@option(
    "--workdir", default=None, help="Directory for the journal and logs (default: a temporary one)."
)
@option(
    "--keep-running",
    is_flag=True,
    default=False,
    help="Leave the cluster up and print the URLs to explore.",
)
@option("--no-failover", is_flag=True, default=False, help="Do not kill the leader midway.")
def demo(count: int, workdir: str | None, keep_running: bool, no_failover: bool) -> None:
    """Start 2 masters and workers in 2 pods on SQLite, submit tasks, kill the leader, summarise."""
    from rich.console import Console

    from mawex.cluster import LocalCluster

    console = Console()
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="mawex-demo-"))
    cluster = LocalCluster(root)
    try:
        ok = _run(console, cluster, count, failover=not no_failover)
        if keep_running:
            _keep_running(console, cluster)
    finally:
        cluster.stop_all()
    if not ok:
        raise SystemExit(1)


def _run(console: Any, cluster: Any, count: int, failover: bool) -> bool:
    from mawex.client import Client

    console.print(f"[bold]mawex demo[/] in {cluster.workdir} (journal {cluster.journal})")
    cluster.start_master("master-a")
    cluster.start_master("master-b")
    leader = cluster.wait_leader()
    console.print(f"masters: {', '.join(cluster.master_urls)}; leader is {leader.name}")
    for pod in PODS:
        cluster.start_worker(
            f"worker-{pod}", EXECUTOR, groups=",".join(GROUPS), pod=pod, args={"delay_ms": "2"}
        )
    cluster.wait_workers(len(PODS) * len(GROUPS))
    console.print(f"workers: groups {', '.join(GROUPS)} in pods {', '.join(PODS)}")

    tasks = _tasks(count)
    client = Client(cluster.master_urls, failover_timeout=60)
    start_offset = 0
    started = time.perf_counter()
    killer = _schedule_failover(console, cluster, delay=0.4) if failover else None
    from rich.progress import Progress

    with Progress(console=console, transient=False) as progress:
        bar = progress.add_task("submitting", total=len(tasks))
        for i in range(0, len(tasks), 25):
            chunk = tasks[i : i + 25]
            client.submit_many(chunk)
            progress.advance(bar, len(chunk))
    outcome, retried, events = _wait_all(console, client, tasks, start_offset)
    elapsed = time.perf_counter() - started
    if killer is not None:
        killer.join()
    client.close()

    lost = len(tasks) - sum(outcome.values())
    console.print(
        f"\n[bold]summary[/]: {len(tasks)} tasks in {elapsed:.2f}s "
        f"({len(tasks) / elapsed:,.0f} tasks/s end to end)"
    )
    console.print(
        f"  completed {outcome['completed']} · failed {outcome['failed']} (on purpose) · "
        f"retried {retried} attempts · cancelled {outcome['cancelled']} · "
        f"expired {outcome['expired']} · topic events {events}"
    )
    verdict = "[green]no task lost[/]" if lost == 0 else f"[red]{lost} tasks LOST[/]"
    console.print(f"  {verdict}; every task has exactly one terminal result")
    leader = cluster.leader()
    if leader is not None:
        console.print(f"  dashboard: {leader.url}/  ·  metrics: {leader.url}/metrics")
    expected_failed = sum(1 for t in tasks if t["payload"].get("fail"))
    return lost == 0 and outcome["failed"] == expected_failed


def _tasks(count: int) -> list[dict[str, Any]]:
    tasks = []
    for i in range(count):
        payload: dict[str, Any] = {"n": i, "values": [i, i * 2, i * 3]}
        if i % 50 == 7:
            payload["fail"] = True
        elif i % 20 == 3:
            payload["fail_attempts"] = 1
        tasks.append(
            {"id": f"demo-{i:06d}", "group": GROUPS[i % 2], "payload": payload, "max_attempts": 3}
        )
    return tasks


def _schedule_failover(console: Any, cluster: Any, delay: float) -> threading.Thread:
    def kill_leader() -> None:
        time.sleep(delay)
        leader = cluster.leader()
        if leader is None:
            return
        console.print(f"[yellow]>>> kill -9 the leader {leader.name} (pid {leader.pid})[/]")
        cluster.kill(leader.name, signal.SIGKILL)
        t0 = time.perf_counter()
        new = cluster.wait_leader(exclude=leader)
        console.print(
            f"[yellow]>>> {new.name} took over in {time.perf_counter() - t0:.2f}s; "
            f"restarting {leader.name} as a standby[/]"
        )
        cluster.start_master(leader.name)

    thread = threading.Thread(target=kill_leader, daemon=True)
    thread.start()
    return thread


def _wait_all(
    console: Any, client: Any, tasks: list[dict[str, Any]], start: int
) -> tuple[Counter[str], int, int]:
    remaining = {(t["group"], t["id"]) for t in tasks}
    outcome: Counter[str] = Counter(completed=0, failed=0, cancelled=0, expired=0)
    terminal_seen: Counter[tuple[str, str]] = Counter()
    retried = events = 0
    for event in client.results(from_offset=start):
        events += 1
        key = (event.group, event.id)
        if event.type == "retrying":
            retried += 1
        elif event.type in outcome:
            terminal_seen[key] += 1
            if key in remaining:
                remaining.discard(key)
                outcome[event.type] += 1
        if not remaining:
            break
    duplicates = [k for k, n in terminal_seen.items() if n > 1]
    if duplicates:
        console.print(f"[red]tasks with more than one terminal result: {duplicates[:5]}[/]")
        outcome["duplicate"] = len(duplicates)
    return outcome, retried, events


def _keep_running(console: Any, cluster: Any) -> None:
    console.print("\n[bold]cluster is up[/] (Ctrl-C to stop):")
    for proc in cluster.procs.values():
        console.print(f"  {proc.name:<16} pid {proc.pid:<8} {proc.url or ''}  log {proc.log_path}")
    urls = ",".join(cluster.master_urls)
    console.print(f"  try: mawex status --master {urls}")
    console.print(
        f"       mawex submit --master {urls} --group etl --payload '{{\"n\": 1}}' --wait"
    )
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        console.print("stopping")
