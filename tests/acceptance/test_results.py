"""Scenario 1 (every task completes with its result) and 6 (duplicates never run twice)."""

from __future__ import annotations

import httpx

import mawex
from mawex.cluster import LocalCluster
from tests.acceptance.scenarios import run_all_complete
from tests.acceptance.support import (
    RECORD,
    TopicReader,
    check_topic,
    read_records,
    start_leader,
    start_worker,
)


def test_all_tasks_complete_with_correct_results(cluster: LocalCluster) -> None:
    run_all_complete(cluster, count=200)


def test_duplicate_submissions_do_not_run_twice(cluster: LocalCluster) -> None:
    """The same (group, id) submitted again while pending, running and after it completed."""
    master = start_leader(cluster)
    url = master.url
    assert url is not None
    records = cluster.workdir / "records.jsonl"
    start_worker(cluster, "worker", RECORD, groups="g", pod="p", args={"path": str(records)})
    task = {"id": "dup-1", "group": "g", "payload": {"seconds": 3.0}}
    key = ("g", "dup-1")

    with httpx.Client(base_url=url, timeout=10) as http, mawex.Client([url]) as client:
        # while no worker is connected yet the task may still be pending: submit again and again
        first = http.post("/v1/tasks", json=task)
        assert first.status_code == 202 and first.json()["duplicate"] is False, first.text
        for _ in range(3):
            again = http.post("/v1/tasks", json=task)
            assert again.status_code == 202, again.text
            assert again.json() == {
                "id": "dup-1",
                "group": "g",
                "status": "accepted",
                "duplicate": True,
            }
        # a different payload or options under the same identity is still the same task
        other = http.post("/v1/tasks", json={**task, "payload": {"seconds": 0}, "max_attempts": 3})
        assert other.status_code == 202 and other.json()["duplicate"] is True, other.text
        assert client.submit("g", {"seconds": 3.0}, id="dup-1").duplicate is True

        cluster.wait_workers(1)
        with TopicReader(url) as reader:
            reader.wait_event(key, "scheduled", timeout=30)
            # while it runs
            assert client.get("g", "dup-1").status == "running"
            assert client.submit("g", {"seconds": 3.0}, id="dup-1").duplicate is True
            batch = http.post("/v1/tasks/batch", json={"tasks": [task, {**task, "id": "dup-2"}]})
            assert batch.status_code == 202 and batch.json() == {"accepted": 1, "duplicates": 1}
            # a batch repeating one identity counts it once
            inner = {"id": "dup-3", "group": "g", "payload": {"seconds": 0}}
            batch = http.post("/v1/tasks/batch", json={"tasks": [inner, inner, inner]})
            assert batch.status_code == 202 and batch.json() == {"accepted": 1, "duplicates": 2}

            reader.wait_terminal([key], timeout=30)
            # after it completed
            for _ in range(2):
                after = http.post("/v1/tasks", json=task)
                assert after.status_code == 202 and after.json()["duplicate"] is True
            receipt = client.submit_many([task, {**task, "group": "g"}])
            assert (receipt.accepted, receipt.duplicates) == (0, 2)
            # a marker queued behind anything the duplicates could have queued (FIFO, one pod)
            assert client.submit("g", {"seconds": 0}, id="marker").duplicate is False
            keys = [key, ("g", "dup-2"), ("g", "dup-3"), ("g", "marker")]
            reader.wait_terminal(keys, timeout=30)
            events = reader.read_to_end()

    terminal = check_topic(events, keys)
    assert all(e["type"] == "completed" for e in terminal.values()), terminal
    dup = [e for e in events if (e["group"], e["id"]) == key]
    assert [(e["type"], e["attempt"]) for e in dup] == [("scheduled", 1), ("completed", 1)]
    assert terminal[key]["result"]["id"] == "dup-1"
    runs = read_records(records)  # Record writes its line before it returns
    assert sorted(r["id"] for r in runs) == ["dup-1", "dup-2", "dup-3", "marker"], runs
    dup_run = next(r for r in runs if r["id"] == "dup-1")
    assert dup_run["end"] - dup_run["start"] >= 2.9, "the first payload (3 s) is the one that ran"
