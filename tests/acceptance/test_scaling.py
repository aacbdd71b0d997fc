"""Scenario 3: workers come and go mid-run; nothing is lost, nothing runs twice."""

from __future__ import annotations

import signal
import time
from collections import Counter

import mawex
from mawex.cluster import LocalCluster
from tests.acceptance.support import (
    ECHO,
    RECORD,
    SLEEP,
    TopicReader,
    assert_no_attempt_ran_twice,
    assert_pod_exclusive,
    check_topic,
    connected_workers,
    key_of,
    log_actions,
    read_records,
    start_leader,
    start_worker,
    wait_pod_workers,
    wait_until,
)


def test_scale_out_and_down_mid_run(cluster: LocalCluster) -> None:
    """Start with one worker, add one mid-run, SIGTERM the first mid-task (it drains)."""
    master = start_leader(cluster)
    url = master.url
    assert url is not None
    records = cluster.workdir / "records.jsonl"

    def worker(pod: str) -> None:
        start_worker(
            cluster,
            f"worker-{pod}",
            RECORD,
            groups="s",
            pod=pod,
            args={"path": str(records), "pod": pod},
            drain=20,
        )

    worker("p1")
    wait_pod_workers(url, "p1", 1)
    tasks = [{"id": f"s-{i:03d}", "group": "s", "payload": {"seconds": 0.1}} for i in range(75)]
    keys = [key_of(t) for t in tasks]
    client = mawex.Client([url])
    reader = TopicReader(url)
    try:
        assert client.submit_many(tasks[:25]).accepted == 25
        reader.wait_for(lambda r: r.count("completed") >= 5, 30, "5 completed on p1")

        # scale out: a second pod joins mid-run and gets work
        worker("p2")
        wait_pod_workers(url, "p2", 1)
        assert client.submit_many(tasks[25:50]).accepted == 25
        reader.wait_for(
            lambda r: any(e["type"] == "scheduled" and e["pod"] == "p2" for e in r.events),
            30,
            "a task scheduled on the new pod p2",
        )

        # scale down: SIGTERM p1 while it runs a task; it finishes that task and checks out
        busy = wait_until(
            lambda: next((w["task"] for w in connected_workers(url, "p1") if w["task"]), None),
            30,
            "p1 busy with a task",
        )
        cluster.kill("worker-p1", signal.SIGTERM)  # returns once the process has exited
        stopped_at = time.time()
        assert cluster.procs["worker-p1"].popen.returncode == 0
        assert client.submit_many(tasks[50:]).accepted == 25
        reader.wait_terminal(keys, timeout=60)
        events = reader.read_to_end()
    finally:
        client.close()
        reader.close()

    terminal = check_topic(events, keys)
    odd = [k for k, e in terminal.items() if e["type"] != "completed"]
    assert not odd, [e for e in events if key_of(e) in odd]
    assert {e["type"] for e in events} == {"scheduled", "completed"}, "no retry, no failure"
    # a task assigned to p1 as it checked out was handed back (requeued), never run there
    again = Counter(key_of(e) for e in events if e["type"] == "scheduled" and e["attempt"] > 1)
    assert len(again) <= 1, again
    for key in again:
        pods = [e["pod"] for e in events if key_of(e) == key and e["type"] == "scheduled"]
        assert pods == ["p1", "p2"], (key, pods)
    # the task p1 was running when told to stop ran to its end there
    busy_key = (busy["group"], busy["id"])
    assert terminal[busy_key]["type"] == "completed"
    scheduled = [e for e in events if key_of(e) == busy_key and e["type"] == "scheduled"]
    assert [e["pod"] for e in scheduled] == ["p1"], scheduled

    runs = read_records(records)
    assert_no_attempt_ran_twice(runs)
    assert_pod_exclusive(runs)
    assert sorted((r["group"], r["id"]) for r in runs) == sorted(keys), "each task ran once"
    assert {r["pod"] for r in runs} == {"p1", "p2"}
    late = [r for r in runs if r["start"] > stopped_at]
    assert late and {r["pod"] for r in late} == {"p2"}, "after p1 left only p2 ran tasks"
    # the check-out was clean (bye), not a lost connection
    master_log = log_actions(master)
    assert any(line.get("action") == "worker_checked_out" for line in master_log)
    assert "p1" not in {w["pod"] for w in connected_workers(url)}


def test_sigterm_hands_back_a_task_that_outlasts_the_drain_timeout(cluster: LocalCluster) -> None:
    """A worker stopping mid-task hands the task back: it is requeued, not failed."""
    master = start_leader(cluster)
    url = master.url
    assert url is not None
    start_worker(cluster, "worker-p1", SLEEP, groups="h", pod="p1", drain=0.5)
    wait_pod_workers(url, "p1", 1)
    key = ("h", "long")
    with mawex.Client([url]) as client, TopicReader(url) as reader:
        client.submit("h", {"seconds": 60}, id="long", max_attempts=1)
        reader.wait_event(key, "scheduled", timeout=30)
        started = time.monotonic()
        cluster.kill("worker-p1", signal.SIGTERM)
        assert time.monotonic() - started < 15, "the worker did not stop after its drain timeout"
        assert cluster.procs["worker-p1"].popen.returncode == 0
        # handed back: pending again, with no error and no failed attempt
        wait_until(
            lambda: client.get("h", "long").status == "pending", 15, "the task pending again"
        )
        assert client.get("h", "long").errors == []
        # another worker (another pod, an executor that answers at once) takes it
        start_worker(cluster, "worker-p2", ECHO, groups="h", pod="p2")
        assert client.result("h", "long", timeout=30) == {"seconds": 60}
        events = reader.read_to_end()
    check_topic(events, [key])
    assert [(e["type"], e["pod"] if e["type"] == "scheduled" else None) for e in events] == [
        ("scheduled", "p1"),
        ("scheduled", "p2"),
        ("completed", None),
    ], events


def test_sigterm_never_fails_a_task_assigned_while_the_worker_checks_out(
    cluster: LocalCluster,
) -> None:
    """Regression: a task dispatched to a draining worker just as it sent ``bye`` must be
    requeued, not failed with "checked out mid-task" (it never ran).

    A worker drains its running task, waits for the ack and sends ``bye``; meanwhile the
    master, seeing it idle again, assigns it the next queued task. Several SIGTERMs while
    tasks queue make that race likely.
    """
    master = start_leader(cluster)
    url = master.url
    assert url is not None
    tasks = [{"id": f"q-{i:03d}", "group": "q", "payload": {"seconds": 0.2}} for i in range(40)]
    keys = [key_of(t) for t in tasks]
    with mawex.Client([url]) as client, TopicReader(url) as reader:
        assert client.submit_many(tasks).accepted == len(tasks)  # max_attempts 1
        for cycle in range(4):
            name = f"worker-{cycle}"
            start_worker(cluster, name, SLEEP, groups="q", pod="p1", drain=10)
            old = {e["worker"] for e in reader.events if e["type"] == "scheduled"}
            reader.wait_for(
                lambda r, old=old: any(
                    e["type"] == "scheduled" and e["worker"] not in old for e in r.events
                ),
                30,
                f"a task scheduled on {name}",
            )
            cluster.kill(name, signal.SIGTERM)
            assert cluster.procs[name].popen.returncode == 0
        start_worker(cluster, "finisher", ECHO, groups="q", pod="p1")
        reader.wait_terminal(keys, timeout=60)
        events = reader.read_to_end()
    terminal = check_topic(events, keys)
    failed = [e for e in terminal.values() if e["type"] != "completed"]
    assert not failed, f"tasks failed by a clean check-out: {failed}"
