"""Scenarios run on more than one journal (SQLite in most tests, PostgreSQL in one)."""

from __future__ import annotations

import json
import signal
from collections import Counter
from typing import Any

import httpx
import websockets.sync.client

import mawex
from mawex.cluster import LocalCluster
from tests.acceptance.support import (
    ECHO,
    RECORD,
    CountingTransport,
    Key,
    Submitter,
    TopicReader,
    assert_no_attempt_ran_twice,
    assert_pod_exclusive,
    check_pods_from_topic,
    check_topic,
    key_of,
    read_records,
    start_leader,
    start_master,
    start_worker,
    state,
    wait_pod_workers,
    wait_until,
)

#: Longer than any wait of a test: a takeover within one cannot be the lease lapsing.
LONG_LEASE_TTL = "300"


def payload_of(i: int) -> Any:
    """Varied JSON payloads: objects, numbers, strings, lists, null, unicode."""
    match i % 5:
        case 0:
            return {"n": i, "text": "é✓ " * (i % 4), "list": [i, i / 4, None, True]}
        case 1:
            return i * 1000003
        case 2:
            return f"task number {i}"
        case 3:
            return [i, {"nested": {"deep": [i, "x"]}}]
        case _:
            return None


def run_all_complete(
    cluster: LocalCluster, count: int = 200, master_args: tuple[str, ...] = ()
) -> None:
    """``count`` tasks over 2 groups and 2 pods all complete with their payload echoed."""
    master = start_leader(cluster, "master", *master_args)
    for pod in ("p1", "p2"):
        start_worker(cluster, f"worker-{pod}", ECHO, groups="alpha,beta", pod=pod)
    cluster.wait_workers(4)
    url = master.url
    assert url is not None
    tasks = [
        {"id": f"t-{i:04d}", "group": ("alpha", "beta")[i % 2], "payload": payload_of(i)}
        for i in range(count)
    ]
    keys = [key_of(t) for t in tasks]
    quarter = count // 4

    # over HTTP: single submissions, then a batch
    with httpx.Client(base_url=url, timeout=10) as http:
        for task in tasks[:10]:
            response = http.post("/v1/tasks", json=task)
            assert response.status_code == 202, response.text
            assert response.json() == {
                "id": task["id"],
                "group": task["group"],
                "status": "accepted",
                "duplicate": False,
            }
        response = http.post("/v1/tasks/batch", json={"tasks": tasks[10 : quarter * 2]})
        assert response.status_code == 202, response.text
        assert response.json() == {"accepted": quarter * 2 - 10, "duplicates": 0}
    # through mawex.Client: single submissions, then submit_many in chunks
    with mawex.Client([url]) as client:
        for task in tasks[quarter * 2 : quarter * 2 + 10]:
            receipt = client.submit(task["group"], task["payload"], id=task["id"])
            assert (receipt.group, receipt.id, receipt.duplicate) == (
                task["group"],
                task["id"],
                False,
            )
        receipt = client.submit_many(tasks[quarter * 2 + 10 :], chunk_size=37)
        assert (receipt.accepted, receipt.duplicates) == (count - quarter * 2 - 10, 0)

    with TopicReader(url) as reader:
        reader.wait_terminal(keys, timeout=60)
        events = reader.read_to_end()
    terminal = check_topic(events, keys)
    check_pods_from_topic(events)
    for task in tasks:
        event = terminal[key_of(task)]
        assert event["type"] == "completed", event
        assert event["attempt"] == 1, event
        assert event["result"] == task["payload"], (event, task)
    assert Counter(e["type"] for e in events) == {"scheduled": count, "completed": count}
    scheduled = [e for e in events if e["type"] == "scheduled"]
    assert {e["pod"] for e in scheduled} == {"p1", "p2"}, "both pods did work"
    assert {e["group"] for e in scheduled} == {"alpha", "beta"}

    # the same topic through mawex.Client, and live over the WebSocket stream
    with mawex.Client([url]) as client:
        seen = list(client.results(from_offset=0, follow=False))
        assert [(e.offset, e.type, e.group, e.id, e.attempt) for e in seen] == [
            (e["offset"], e["type"], e["group"], e["id"], e["attempt"]) for e in events
        ]
        for task in tasks[:: max(1, count // 20)]:
            assert client.result(task["group"], task["id"], timeout=10) == task["payload"]
            got = client.get(task["group"], task["id"])
            assert (got.status, got.attempt, got.result) == ("completed", 1, task["payload"])
        counts = client.state()["counts"]
    assert counts["accepted"] == count and counts["completed"] == count, counts
    assert counts["pending"] == 0 and counts["running"] == 0, counts
    ws_url = url.replace("http://", "ws://") + "/v1/results/stream?from=1"
    with websockets.sync.client.connect(ws_url, open_timeout=10) as ws:
        streamed = [json.loads(ws.recv(timeout=10)) for _ in range(len(events))]
    assert streamed == events


def _record_tasks(prefix: str, start: int, count: int, **options: Any) -> list[dict[str, Any]]:
    return [
        {
            "id": f"{prefix}-{i:05d}",
            "group": ("g1", "g2")[i % 2],
            "payload": {"seconds": 0.005, "n": i},
            **options,
        }
        for i in range(start, start + count)
    ]


def run_master_sigkill(cluster: LocalCluster, count: int = 600) -> None:
    """kill -9 the master mid-run, submit while it is down, restart it on the same journal.

    Every acknowledged task reaches exactly one terminal result, the topic read before
    the crash is a prefix of the topic after it, and no attempt ran twice.
    """
    # a lease that lapses fast (so the restarted master leads soon) and a worker grace
    # long enough for the workers to find the restarted master with their running tasks
    master_args = ("--lease-ttl", "2", "--worker-grace", "8")
    master = start_leader(cluster, "master", *master_args)
    url = master.url
    assert url is not None
    port = int(url.rsplit(":", 1)[1])
    records = cluster.workdir / "records.jsonl"
    for pod in ("p1", "p2"):
        start_worker(
            cluster,
            f"worker-{pod}",
            RECORD,
            groups="g1,g2",
            pod=pod,
            args={"path": str(records), "pod": pod},
        )
    cluster.wait_workers(4)

    half = count // 2
    first, second = _record_tasks("a", 0, half), _record_tasks("b", half, count - half)
    transport = CountingTransport()
    client = mawex.Client([url], failover_timeout=120, transport=transport)
    reader = TopicReader(url)
    try:
        submitter = Submitter(client, first)
        submitter.run()  # in this thread: all acknowledged before the crash
        assert submitter.error is None, submitter.error
        acked: list[Key] = list(submitter.acked)
        reader.wait_for(lambda r: r.count("completed") >= count // 10, 60, "a tenth completed")

        workers_before = {w["id"] for w in state(url)["workers"]}
        cluster.kill("master", signal.SIGKILL)
        before = list(reader.events)
        assert len(reader.terminal()) < half, "the crash must happen mid-run"

        late = Submitter(client, second)
        late.start()
        wait_until(lambda: transport.failures >= 1, 30, "a submission while the master is down")
        assert not late.acked, "nothing can be acknowledged while no master runs"
        start_master(cluster, "master", *master_args, port=port)
        cluster.wait_leader(timeout=30)
        late.join(timeout=120)
        assert not late.is_alive(), "the submitter is stuck"
        assert late.error is None, late.error
        acked += late.acked
        assert len(acked) == count

        reader.wait_terminal(acked, timeout=120)
    finally:
        client.close()
        reader.close()

    with TopicReader(url) as final:
        events = final.read_to_end()
    assert events[: len(before)] == before, "the topic read before the crash changed"
    terminal = check_topic(events, acked)
    check_pods_from_topic(events)
    # the same worker processes reconnected to the restarted master and carried on
    workers_after = {e["worker"] for e in events[len(before) :] if e["type"] == "scheduled"}
    assert workers_after and workers_after <= workers_before, (workers_before, workers_after)
    not_completed = [e for e in terminal.values() if e["type"] != "completed"]
    assert not not_completed, f"{len(not_completed)} did not complete: {not_completed[:3]}"
    assert len(terminal) == count

    runs = read_records(records)
    assert_no_attempt_ran_twice(runs)
    assert_pod_exclusive(runs)
    ran = {(r["group"], r["id"]) for r in runs}
    assert set(acked) <= ran, f"never ran: {sorted(set(acked) - ran)[:5]}"
    counts = state(url)["counts"]
    assert counts["accepted"] == count and counts["completed"] == count, counts


def run_restart_everything(cluster: LocalCluster, count: int = 400) -> None:
    """kill -9 the master and every worker mid-run, restart them all: nothing acknowledged lost.

    Attempts that died with their workers are retried (``max_attempts`` 3) once the
    restarted master has given up on the old workers.
    """
    master_args = ("--lease-ttl", "2", "--worker-grace", "2")
    master = start_leader(cluster, "master", *master_args)
    url = master.url
    assert url is not None
    port = int(url.rsplit(":", 1)[1])
    records = cluster.workdir / "records.jsonl"

    def workers() -> None:
        for pod in ("p1", "p2"):
            start_worker(
                cluster,
                f"worker-{pod}",
                RECORD,
                groups="g1,g2",
                pod=pod,
                args={"path": str(records), "pod": pod},
            )
        cluster.wait_workers(4)

    workers()
    tasks = _record_tasks("r", 0, count, max_attempts=3)
    for task in tasks:
        task["payload"]["seconds"] = 0.01
    with mawex.Client([url]) as client:
        receipt = client.submit_many(tasks[: count // 2])
        assert receipt.accepted == count // 2
    acked = [key_of(t) for t in tasks[: count // 2]]

    with TopicReader(url) as reader:
        reader.wait_for(lambda r: r.count("completed") >= count // 10, 60, "a tenth completed")
        for name in ("master", "worker-p1", "worker-p2"):
            cluster.kill(name, signal.SIGKILL)
        before = list(reader.events)
        running = {key_of(e) for e in before if e["type"] == "scheduled"} - reader.terminal().keys()
        assert len(reader.terminal()) < count // 2, "the crash must happen mid-run"

        start_master(cluster, "master", *master_args, port=port)
        cluster.wait_leader(timeout=30)
        workers()
        with mawex.Client([url]) as client:
            receipt = client.submit_many(tasks[count // 2 :])
            assert receipt.accepted == count - count // 2
        acked += [key_of(t) for t in tasks[count // 2 :]]
        reader.wait_terminal(acked, timeout=90)
        events = reader.read_to_end()

    assert events[: len(before)] == before, "the topic read before the crash changed"
    terminal = check_topic(events, acked)
    not_completed = [e for e in terminal.values() if e["type"] != "completed"]
    assert not not_completed, f"{len(not_completed)} did not complete: {not_completed[:3]}"
    # the attempts the crash interrupted were retried, with the lost worker named
    for key in running:
        retries = [e for e in events if key_of(e) == key and e["type"] == "retrying"]
        if retries:
            assert "lost" in retries[0]["error"] or "restarted" in retries[0]["error"], retries
    runs = read_records(records)
    assert_no_attempt_ran_twice(runs)
    assert {(r["group"], r["id"]) for r in runs} >= set(acked)


def run_standby_takes_over_a_killed_leader(
    cluster: LocalCluster, master_args: tuple[str, ...] = ()
) -> None:
    """kill -9 of the leader: the standby sees its process (or connection) gone and
    takes over without waiting for the lease, and a task then runs through it."""
    a = cluster.start_master("a", "--lease-ttl", LONG_LEASE_TTL, *master_args)
    assert cluster.wait_leader() is a
    b = cluster.start_master("b", "--lease-ttl", LONG_LEASE_TTL, *master_args)
    assert a.url and b.url
    start_worker(cluster, "worker", ECHO, groups="g", pod="p")
    wait_pod_workers(a.url, "p", 1)
    with mawex.Client([a.url, b.url], timeout=30, failover_timeout=60) as client:
        assert client.run("g", "before", timeout=30) == "before"
        cluster.kill("a", signal.SIGKILL)
        assert cluster.wait_leader(exclude=a, timeout=60) is b
        wait_pod_workers(b.url, "p", 1)
        assert client.run("g", "after", timeout=30) == "after"
