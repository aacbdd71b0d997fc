"""Scenario 2: a pod never runs two tasks at once, whatever groups and processes serve it."""

from __future__ import annotations

from collections import Counter

import mawex
from mawex.cluster import LocalCluster
from tests.acceptance.support import (
    RECORD,
    TopicReader,
    assert_no_attempt_ran_twice,
    assert_pod_exclusive,
    check_pods_from_topic,
    check_topic,
    connected_workers,
    key_of,
    overlaps,
    read_records,
    start_leader,
    start_worker,
)


def test_pod_runs_one_task_at_a_time_across_groups_and_processes(cluster: LocalCluster) -> None:
    master = start_leader(cluster)
    url = master.url
    assert url is not None
    files = {name: cluster.workdir / f"{name}.jsonl" for name in ("shared-1", "shared-2", "other")}
    # pod "shared": two worker processes, each serving groups a, b and c (6 workers);
    # pod "other": one process serving the same groups
    for name, pod in (("shared-1", "shared"), ("shared-2", "shared"), ("other", "other")):
        start_worker(
            cluster,
            name,
            RECORD,
            groups="a,b,c",
            pod=pod,
            args={"path": str(files[name]), "pod": pod},
        )
    cluster.wait_workers(9)

    tasks = [
        {"id": f"t-{i:03d}", "group": "abc"[i % 3], "payload": {"seconds": 0.04}} for i in range(90)
    ]
    with mawex.Client([url]) as client:
        assert client.submit_many(tasks).accepted == len(tasks)
    with TopicReader(url) as reader:
        reader.wait_terminal([key_of(t) for t in tasks], timeout=60)
        events = reader.read_to_end()

    terminal = check_topic(events, [key_of(t) for t in tasks])
    assert all(e["type"] == "completed" for e in terminal.values())
    check_pods_from_topic(events)

    per_process = {name: read_records(path) for name, path in files.items()}
    runs = [r for rs in per_process.values() for r in rs]
    assert len(runs) == len(tasks)
    assert_no_attempt_ran_twice(runs)
    # the executors' own clocks: no two runs of one pod overlap
    assert_pod_exclusive(runs)
    shared = per_process["shared-1"] + per_process["shared-2"]
    other = per_process["other"]
    # the shared pod really was shared: both processes and all three groups ran in it
    assert per_process["shared-1"] and per_process["shared-2"], {
        k: len(v) for k, v in per_process.items()
    }
    assert {r["group"] for r in shared} == {"a", "b", "c"}
    assert {r["pod"] for r in shared} == {"shared"} and {r["pod"] for r in other} == {"other"}
    # ... while the other pod ran at the same time
    assert other, "pod other ran nothing"
    concurrent = sum(1 for s in shared for o in other if overlaps(s, o))
    assert concurrent > 0, "the two pods never ran concurrently"
    by_pod = Counter(e["pod"] for e in events if e["type"] == "scheduled")
    assert by_pod["shared"] == len(shared) and by_pod["other"] == len(other), by_pod


def test_concurrency_runs_several_pods_in_one_process(cluster: LocalCluster) -> None:
    master = start_leader(cluster)
    url = master.url
    assert url is not None
    path = cluster.workdir / "multi.jsonl"
    start_worker(
        cluster,
        "multi",
        RECORD,
        groups="a,b",
        pod="multi",
        args={"path": str(path)},
        extra=("--concurrency", "3"),
    )
    cluster.wait_workers(6)  # 3 pods x 2 groups, one worker process
    pods = {w["pod"] for w in connected_workers(url)}
    assert pods == {"multi-1", "multi-2", "multi-3"}

    tasks = [
        {"id": f"c-{i:03d}", "group": "ab"[i % 2], "payload": {"seconds": 0.05}} for i in range(36)
    ]
    with mawex.Client([url]) as client:
        assert client.submit_many(tasks).accepted == len(tasks)
    with TopicReader(url) as reader:
        reader.wait_terminal([key_of(t) for t in tasks], timeout=60)
        events = reader.read_to_end()
    terminal = check_topic(events, [key_of(t) for t in tasks])
    assert all(e["type"] == "completed" for e in terminal.values())
    check_pods_from_topic(events)

    # each run's real pod is the one its scheduled event names
    pod_of = {
        (e["group"], e["id"], e["attempt"]): e["pod"] for e in events if e["type"] == "scheduled"
    }
    runs = [{**r, "pod": pod_of[(r["group"], r["id"], r["attempt"])]} for r in read_records(path)]
    assert len(runs) == len(tasks)
    assert_no_attempt_ran_twice(runs)
    assert_pod_exclusive(runs)
    assert {r["pod"] for r in runs} == pods
    concurrent = sum(1 for a in runs for b in runs if a["pod"] != b["pod"] and overlaps(a, b))
    assert concurrent > 0, "the pods of one process never ran at the same time"
