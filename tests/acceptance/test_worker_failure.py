"""Scenario 4: a worker killed with SIGKILL mid-task; the task is retried or failed clearly."""

from __future__ import annotations

import signal
import time

import pytest

import mawex
from mawex.cluster import LocalCluster
from tests.acceptance.support import (
    FAST_FAILURE,
    SLEEP,
    TopicReader,
    check_topic,
    start_leader,
    start_worker,
    wait_pod_workers,
)


def test_worker_sigkill_mid_task_is_retried_on_another_worker(cluster: LocalCluster) -> None:
    master = start_leader(cluster, "master", *FAST_FAILURE)
    url = master.url
    assert url is not None
    for pod in ("p1", "p2"):
        start_worker(cluster, f"worker-{pod}", SLEEP, groups="k", pod=pod)
        wait_pod_workers(url, pod, 1)
    key = ("k", "victim")
    with mawex.Client([url]) as client, TopicReader(url) as reader:
        client.submit("k", {"seconds": 3}, id="victim", max_attempts=2)
        first = reader.wait_event(key, "scheduled", timeout=30)
        killed_at = time.time()
        cluster.kill(f"worker-{first['pod']}", signal.SIGKILL)
        assert client.result("k", "victim", timeout=30) == {"slept": 3.0}
        events = reader.read_to_end()
        errors = client.get(*key).errors
    check_topic(events, [key])
    kinds = [(e["type"], e["attempt"]) for e in events]
    assert kinds == [("scheduled", 1), ("retrying", 1), ("scheduled", 2), ("completed", 2)], events
    retrying, second = events[1], events[2]
    assert first["worker"] in retrying["error"] and "lost" in retrying["error"], retrying
    assert second["pod"] != first["pod"], "the retry ran on the surviving worker"
    assert retrying["at"] - killed_at < 10, "the lost worker was noticed within seconds"
    assert errors == [retrying["error"]], "GET shows the error of the lost attempt"


def test_worker_sigkill_mid_task_without_attempts_left_fails_clearly(
    cluster: LocalCluster,
) -> None:
    master = start_leader(cluster, "master", *FAST_FAILURE)
    url = master.url
    assert url is not None
    start_worker(cluster, "worker-p1", SLEEP, groups="k", pod="p1")
    wait_pod_workers(url, "p1", 1)
    key = ("k", "victim")
    with mawex.Client([url]) as client, TopicReader(url) as reader:
        client.submit("k", {"seconds": 5}, id="victim", max_attempts=1)
        scheduled = reader.wait_event(key, "scheduled", timeout=30)
        cluster.kill("worker-p1", signal.SIGKILL)
        with pytest.raises(mawex.TaskFailed) as failure:
            client.result("k", "victim", timeout=30)
        assert failure.value.task_status == "failed"
        error = failure.value.error or ""
        events = reader.read_to_end()
        pods = client.state()["pods"]
    check_topic(events, [key])
    assert [(e["type"], e["attempt"]) for e in events] == [("scheduled", 1), ("failed", 1)]
    assert events[1]["error"] == error
    assert scheduled["worker"] in error and "lost" in error, error
    assert pods.get("p1", {}).get("busy") is not True, "the dead worker's pod is free"
