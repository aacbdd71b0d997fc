"""Scenarios 7-9: cancel (pending and running), pending-timeout expiry, attempt timeouts."""

from __future__ import annotations

import time

import httpx
import pytest

import mawex
from mawex.cluster import LocalCluster
from tests.acceptance.support import (
    SLEEP,
    SLEEP_SYNC,
    TopicReader,
    check_topic,
    log_actions,
    start_leader,
    start_worker,
    state,
    wait_pod_workers,
)


def test_cancel_a_pending_task(cluster: LocalCluster) -> None:
    master = start_leader(cluster)
    url = master.url
    assert url is not None
    key = ("nobody", "waiting")  # no worker serves group "nobody"
    with mawex.Client([url]) as client, httpx.Client(base_url=url, timeout=10) as http:
        client.submit("nobody", {"x": 1}, id="waiting")
        client.submit("nobody", {"x": 2}, id="stays")
        assert client.get(*key).status == "pending"
        response = http.delete("/v1/tasks/nobody/waiting")
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "cancelled"
        assert client.get(*key).status == "cancelled"
        with pytest.raises(mawex.TaskCancelled):
            client.result(*key, timeout=5)
        with TopicReader(url) as reader:
            reader.wait_terminal([key], timeout=10)
            events = reader.read_to_end()
            # cancelling it again changes nothing
            offset = state(url)["offset"]
            assert client.cancel(*key).status == "cancelled"
            assert state(url)["offset"] == offset
            assert reader.read_to_end() == events
        assert [(e["type"], e["id"]) for e in events] == [("cancelled", "waiting")]
        assert client.get("nobody", "stays").status == "pending", "the other task is untouched"
        groups = state(url)["groups"]
        assert groups["nobody"]["pending"] == 1, groups


def test_cancel_a_running_task_stops_it_and_frees_the_worker(cluster: LocalCluster) -> None:
    master = start_leader(cluster)
    url = master.url
    assert url is not None
    worker = start_worker(cluster, "worker", SLEEP, groups="c", pod="p")
    wait_pod_workers(url, "p", 1)
    long, after = ("c", "long"), ("c", "after")
    with mawex.Client([url]) as client, TopicReader(url) as reader:
        client.submit("c", {"seconds": 30}, id="long")
        scheduled = reader.wait_event(long, "scheduled", timeout=30)
        client.submit("c", {"seconds": 0.1}, id="after")  # queued behind it, same worker
        assert client.get(*after).status == "pending"
        cancelled = client.cancel(*long)
        assert cancelled.status == "cancelled"
        assert client.result(*after, timeout=20) == {"slept": 0.1}
        events = reader.read_to_end()
    check_topic(events, [long, after])
    assert [(e["type"], e["id"]) for e in events] == [
        ("scheduled", "long"),
        ("cancelled", "long"),
        ("scheduled", "after"),
        ("completed", "after"),
    ], events
    # the 30 s attempt was stopped: the same worker (one attempt at a time) ran the next
    # task within seconds, not after 30 s
    assert events[2]["worker"] == scheduled["worker"]
    assert events[3]["at"] - scheduled["at"] < 15, events
    actions = [line for line in log_actions(worker) if line.get("action") == "cancel"]
    assert actions and actions[0]["attempt"] == "c/long#1", actions
    final = state(url)
    assert final["pods"]["p"]["busy"] is False, final["pods"]
    assert final["counts"]["cancelled"] == 1 and final["counts"]["completed"] == 1


def test_pending_timeout_expires_tasks_no_worker_takes(cluster: LocalCluster) -> None:
    master = start_leader(cluster, "master", "--pending-timeout", "1")
    url = master.url
    assert url is not None
    keys = [("idle", f"e-{i}") for i in range(3)]
    submitted = time.time()
    with httpx.Client(base_url=url, timeout=10) as http:
        response = http.post(
            "/v1/tasks/batch",
            json={"tasks": [{"id": i, "group": g, "payload": None} for g, i in keys[:2]]},
        )
        assert response.status_code == 202, response.text
    with mawex.Client([url]) as client:
        client.submit("idle", {"n": 3}, id="e-2")
        with TopicReader(url) as reader:
            terminal = reader.wait_terminal(keys, timeout=20)
            events = reader.read_to_end()
        for key in keys:
            assert terminal[key]["type"] == "expired", terminal[key]
            assert terminal[key]["at"] - submitted >= 0.9, "expired before its pending timeout"
            assert client.get(*key).status == "expired"
            with pytest.raises(mawex.TaskExpired):
                client.result(*key, timeout=5)
        with httpx.Client(base_url=url, timeout=10) as http:
            body = http.get("/v1/tasks/idle/e-0").json()
        assert body["status"] == "expired", body
    check_topic(events, keys)
    assert [e["type"] for e in events] == ["expired"] * 3, "never scheduled"
    assert state(url)["counts"]["expired"] == 3


def test_async_task_past_its_timeout_is_killed_and_retried(cluster: LocalCluster) -> None:
    master = start_leader(cluster)
    url = master.url
    assert url is not None
    start_worker(cluster, "worker", SLEEP, groups="t", pod="p")
    wait_pod_workers(url, "p", 1)
    key = ("t", "slow")
    with mawex.Client([url]) as client, TopicReader(url) as reader:
        client.submit("t", {"seconds": 30}, id="slow", timeout_s=1, max_attempts=2)
        with pytest.raises(mawex.TaskFailed) as failure:
            client.result(*key, timeout=25)
        events = reader.read_to_end()
        task = client.get(*key)
    check_topic(events, [key])
    assert [(e["type"], e["attempt"]) for e in events] == [
        ("scheduled", 1),
        ("retrying", 1),
        ("scheduled", 2),
        ("failed", 2),
    ], events
    for event in (events[1], events[3]):
        assert "timed out" in event["error"], event
    assert "timed out" in (failure.value.error or "")
    # each attempt was stopped at about its 1 s deadline, far from the 30 s it asked for
    assert events[1]["at"] - events[0]["at"] < 6, events
    assert events[3]["at"] - events[2]["at"] < 6, events
    assert task.attempt == 2 and len(task.errors) == 2, task
    assert state(url)["pods"]["p"]["busy"] is False


def test_sync_task_past_its_timeout_fails_and_keeps_its_pod_busy(cluster: LocalCluster) -> None:
    """A thread cannot be killed: the attempt fails at its deadline, the pod stays busy until
    the thread returns, and only then does the pod's next task start."""
    master = start_leader(cluster)
    url = master.url
    assert url is not None
    start_worker(cluster, "worker", SLEEP_SYNC, groups="t1,t2", pod="p")
    wait_pod_workers(url, "p", 2)
    blocking, next_ = ("t1", "blocking"), ("t2", "next")
    with mawex.Client([url]) as client, TopicReader(url) as reader:
        client.submit("t1", {"seconds": 6}, id="blocking", timeout_s=1)
        scheduled = reader.wait_event(blocking, "scheduled", timeout=30)
        client.submit("t2", {"seconds": 0}, id="next")  # another group, same pod
        failed = reader.wait_event(blocking, "failed", timeout=20)
        # the attempt is over but its thread still runs: the pod is busy, next waits
        if time.time() < scheduled["at"] + 4.5:
            view = state(url)
            assert view["pods"]["p"]["busy"] is True, view["pods"]
            assert client.get(*next_).status == "pending"
        assert client.result(*next_, timeout=30) == {"slept": 0.0}
        events = reader.read_to_end()
    check_topic(events, [blocking, next_])
    assert "timed out" in failed["error"], failed
    assert failed["at"] - scheduled["at"] < 4, "failed at its deadline, not when the thread ended"
    next_scheduled = next(e for e in events if e["id"] == "next" and e["type"] == "scheduled")
    assert next_scheduled["at"] >= scheduled["at"] + 5.5, (
        "the pod's next task started before the timed-out thread returned"
    )
    assert [e["type"] for e in events if e["id"] == "blocking"] == ["scheduled", "failed"]
