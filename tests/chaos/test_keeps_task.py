"""A worker keeps its attempt across a master failover, and across a stall of the master.

- SIGKILL of the leader while a worker runs a 4 s task: the new leader accepts the
  worker's reconnect with ``running``, the task completes with attempt 1 (no
  retry, no false failure).
- SIGSTOP of the only master for longer than the worker timeout, while a worker
  runs a task and another task waits for the same pod: after SIGCONT the master
  sees every worker silent; the live ones must not be declared lost (their
  attempt failed, their pod handed to another task while the first still runs).
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

import mawex
from mawex.cluster import LocalCluster

from .checker import check_history, read_journal, read_runs, read_topic
from .harness import EXECUTOR, REPO

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

MASTER_ARGS = ("--lease-ttl", "1.0", "--heartbeat", "0.2", "--worker-grace", "2.0")


def _cluster(tmp_path: Path, journal: str) -> LocalCluster:
    return LocalCluster(tmp_path, journal=journal, env={"PYTHONPATH": str(REPO)})


def _poll(what: str, fn: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _task_view(urls: list[str], group: str, id: str) -> dict[str, Any] | None:
    for url in urls:
        try:
            response = httpx.get(f"{url}/v1/tasks/{group}/{id}", timeout=1)
        except httpx.HTTPError:
            continue
        if response.status_code == 200:
            body: dict[str, Any] = response.json()
            return body
    return None


def _events_of(topic: list[dict[str, Any]], id: str) -> list[tuple[str, int]]:
    return [(e["type"], e["attempt"]) for e in topic if e["id"] == id]


def _keeps_task_across_failover(tmp_path: Path, journal: str) -> None:
    runs = tmp_path / "runs.jsonl"
    with _cluster(tmp_path, journal) as cluster:
        first = cluster.start_master("m0", *MASTER_ARGS)
        cluster.wait_leader()
        cluster.start_master("m1", *MASTER_ARGS)
        cluster.start_worker(
            "w", EXECUTOR, groups="g", pod="p", args={"path": str(runs), "pod": "p"}
        )
        cluster.wait_workers(1)
        urls = cluster.master_urls
        with mawex.Client(urls, timeout=2.0) as client:
            client.submit("g", {"seconds": 4}, id="long", max_attempts=3)
        _poll(
            "the long task to start",
            lambda: any(line.get("event") == "start" for line in read_runs([runs])),
        )
        leader = cluster.leader()
        assert leader is first
        killed_at = time.time()
        cluster.kill("m0", signal.SIGKILL)
        new = cluster.wait_leader(exclude=first)
        # the worker reports the attempt it still runs: the new leader keeps it running
        view = _poll(
            "the new leader to see the worker running the task",
            lambda: next(
                (
                    w
                    for w in (cluster.state_of(new) or {}).get("workers", [])
                    if w.get("task") and w["status"] != "disconnected"
                ),
                None,
            ),
            timeout=10,
        )
        assert view["task"]["id"] == "long" and view["task"]["attempt"] == 1
        took_over_at = time.time()
        done = _poll(
            "the task to complete",
            lambda: (
                (v := _task_view([new.url or ""], "g", "long")) and v["status"] == "completed" and v
            ),
        )
        assert done["attempt"] == 1
        assert took_over_at - killed_at < 4, "the new leader took over while the task still ran"
        topic = read_topic([new.url or ""])
    assert _events_of(topic, "long") == [("scheduled", 1), ("completed", 1)]
    lines = read_runs([runs])
    assert [(line.get("event", "end"), line["attempt"]) for line in lines] == [
        ("start", 1),
        ("end", 1),
    ]
    records, snapshot = read_journal(journal)
    history = check_history(
        topic=topic, journal=records, snapshot=snapshot, runs=lines, acknowledged=[("g", "long")]
    )
    history.assert_ok()
    assert len(history.epochs) == 2


def test_worker_keeps_its_task_across_failover_sqlite(tmp_path: Path) -> None:
    _keeps_task_across_failover(tmp_path, f"sqlite:///{tmp_path / 'mawex.db'}")


@pytest.mark.postgresql
def test_worker_keeps_its_task_across_failover_postgresql(
    tmp_path: Path, postgresql_url: str
) -> None:
    _keeps_task_across_failover(tmp_path, postgresql_url)


def test_a_stalled_master_does_not_lose_live_workers(tmp_path: Path) -> None:
    """One master paused 3 s (> the 2 s worker timeout) while a pod runs a task."""
    runs = tmp_path / "runs.jsonl"
    journal = f"sqlite:///{tmp_path / 'mawex.db'}"
    with _cluster(tmp_path, journal) as cluster:
        master = cluster.start_master("m0", *MASTER_ARGS)
        cluster.wait_leader()
        for name in ("w1", "w2"):
            cluster.start_worker(
                name, EXECUTOR, groups="g", pod="p", args={"path": str(runs), "pod": "p"}
            )
        cluster.wait_workers(2)
        with mawex.Client(cluster.master_urls, timeout=2.0) as client:
            client.submit("g", {"seconds": 5}, id="long", max_attempts=3)
            _poll(
                "the long task to start",
                lambda: any(line.get("event") == "start" for line in read_runs([runs])),
            )
            client.submit("g", {"seconds": 0.1}, id="next", max_attempts=3)
            master.signal(signal.SIGSTOP)
            time.sleep(3.0)
            master.signal(signal.SIGCONT)
            for id in ("long", "next"):
                _poll(
                    f"{id} to finish",
                    lambda id=id: (
                        (v := _task_view([master.url or ""], "g", id))
                        and v["status"] in ("completed", "failed")
                    ),
                )
        topic = read_topic([master.url or ""])
    lines = read_runs([runs])
    records, snapshot = read_journal(journal)
    history = check_history(
        topic=topic,
        journal=records,
        snapshot=snapshot,
        runs=lines,
        acknowledged=[("g", "long"), ("g", "next")],
    )
    history.assert_ok()
    assert _events_of(topic, "long") == [("scheduled", 1), ("completed", 1)], topic
