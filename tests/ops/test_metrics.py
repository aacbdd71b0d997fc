"""``GET /metrics`` after a known run: every counter equals what happened.

Real processes: a leader, a standby and one worker. The run has completions, a retry
that then succeeds, tasks failing for good after two attempts, a cancellation and an
expiry; then the leader is killed and the standby's scrape must agree.
"""

from __future__ import annotations

import signal
from collections import defaultdict
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

import mawex
from mawex.cluster import LocalCluster
from tests.ops.conftest import get_state, start_master, url_of
from tests.polling import wait_until

DEMO = "mawex.examples.demo:Demo"
Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def scrape(url: str) -> Samples:
    response = httpx.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = defaultdict(dict)
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[sample.name][tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[name].get(tuple(sorted(labels.items())), 0.0)


def test_metrics_count_what_happened(cluster: LocalCluster) -> None:
    leader = start_master(cluster, "master-a", "--lease-ttl", "1.5")
    url = url_of(leader)
    assert cluster.wait_leader(timeout=30) is leader
    standby = start_master(cluster, "master-b", "--lease-ttl", "1.5")
    cluster.start_worker("worker", DEMO, groups="etl", pod="pod-1", args={"delay_ms": "1"})
    cluster.wait_workers(1)

    with mawex.Client([url]) as client, httpx.Client(base_url=url, timeout=10) as http:
        tasks: list[dict[str, Any]] = [
            {"id": f"ok-{i}", "group": "etl", "payload": {"n": i}} for i in range(10)
        ]
        tasks.append(
            {"id": "flaky", "group": "etl", "payload": {"fail_attempts": 1}, "max_attempts": 3}
        )
        tasks += [
            {"id": f"bad-{i}", "group": "etl", "payload": {"fail": True}, "max_attempts": 2}
            for i in range(2)
        ]
        assert client.submit_many(tasks).accepted == 13
        assert client.submit_many(tasks[:3]).duplicates == 3  # duplicates are not counted
        # a group without workers: one task cancelled, one expired while pending
        client.submit("idle", {"n": 1}, id="to-cancel")
        client.cancel("idle", "to-cancel")
        expiring = {"id": "to-expire", "group": "idle", "payload": 1, "pending_timeout_s": 0.3}
        assert http.post("/v1/tasks", json=expiring).status_code == 202
        client.submit("idle", {"n": 2}, id="waiting")
        for task in tasks:
            try:
                client.result("etl", task["id"], timeout=60)
            except mawex.TaskFailed:
                assert task["id"].startswith("bad-")
        wait_until(lambda: client.get("idle", "to-expire").status == "expired", 30, "the expiry")

    # lease renewals happen every ttl/3
    wait_until(lambda: value(scrape(url), "mawex_lease_renewals_total") >= 1, 10, "a lease renewal")
    m = scrape(url)
    etl = {"group": "etl"}
    idle = {"group": "idle"}
    assert value(m, "mawex_tasks_accepted_total", **etl) == 13
    assert value(m, "mawex_tasks_accepted_total", **idle) == 3
    # attempts: 10 ok + flaky twice + 2 bad twice each
    assert value(m, "mawex_tasks_started_total", **etl) == 10 + 2 + 4
    assert value(m, "mawex_tasks_completed_total", **etl) == 11
    assert value(m, "mawex_tasks_retried_total", **etl) == 1 + 2
    assert value(m, "mawex_tasks_failed_total", **etl) == 2
    assert value(m, "mawex_tasks_cancelled_total", **idle) == 1
    assert value(m, "mawex_tasks_expired_total", **idle) == 1
    assert value(m, "mawex_tasks_started_total", **idle) == 0
    assert value(m, "mawex_tasks_pending", **idle) == 1
    assert value(m, "mawex_tasks_pending", **etl) == 0
    assert value(m, "mawex_tasks_running", **etl) == 0
    assert value(m, "mawex_workers", group="etl", pod="pod-1", status="idle") == 1
    assert value(m, "mawex_pod_busy", pod="pod-1") == 0

    # histograms: one dispatch observation per attempt, one end-to-end per terminal task
    assert value(m, "mawex_dispatch_latency_seconds_count", **etl) == 16
    assert value(m, "mawex_dispatch_latency_seconds_bucket", group="etl", le="+Inf") == 16
    assert value(m, "mawex_end_to_end_latency_seconds_count", group="etl", status="completed") == 11
    assert value(m, "mawex_end_to_end_latency_seconds_count", group="etl", status="failed") == 2
    assert value(m, "mawex_end_to_end_latency_seconds_count", group="idle", status="cancelled") == 1
    assert value(m, "mawex_end_to_end_latency_seconds_count", group="idle", status="expired") == 1
    end_to_end = value(m, "mawex_end_to_end_latency_seconds_sum", group="etl", status="completed")
    assert 0 < end_to_end < 11 * 60
    appends = value(m, "mawex_journal_appends_total")
    assert appends >= 1
    assert value(m, "mawex_journal_append_duration_seconds_count") == appends
    assert value(m, "mawex_journal_append_batch_events_count") == appends
    assert value(m, "mawex_journal_append_batch_events_sum") == value(
        m, "mawex_journal_appended_events_total"
    )
    assert value(m, "mawex_journal_append_seconds_total") > 0
    assert value(m, "mawex_busy_poll_seconds_total") == 0  # off by default

    # leadership
    epoch = get_state(url)["epoch"]
    assert value(m, "mawex_leader") == 1
    assert value(m, "mawex_epoch") == epoch
    assert value(m, "mawex_failovers_total") == 1
    assert value(m, "mawex_master_info", master_id="default", role="leader") == 1
    assert value(m, "process_cpu_seconds_total") > 0
    s = scrape(url_of(standby))
    assert value(s, "mawex_leader") == 0
    assert value(s, "mawex_failovers_total") == 0

    # after a failover the new leader's counters (folded from the journal) agree
    cluster.kill("master-a", signal.SIGKILL)
    assert cluster.wait_leader(timeout=30) is standby
    s = scrape(url_of(standby))
    assert value(s, "mawex_leader") == 1
    assert value(s, "mawex_epoch") > epoch
    assert value(s, "mawex_failovers_total") == 1
    for name in ("accepted", "started", "completed", "retried", "failed", "cancelled", "expired"):
        for labels in (etl, idle):
            assert value(s, f"mawex_tasks_{name}_total", **labels) == value(
                m, f"mawex_tasks_{name}_total", **labels
            ), (name, labels)


def test_busy_poll_time_is_counted(cluster: LocalCluster) -> None:
    """``mawex master --busy-poll``: the time its loop spent polling after turns is exported."""
    master = start_master(cluster, "master-a", "--busy-poll", "0.05")
    url = url_of(master)
    cluster.start_worker("worker", DEMO, groups="etl", pod="pod-1")
    cluster.wait_workers(1)
    with mawex.Client([url]) as client:
        for i in range(3):
            client.run("etl", {"n": i}, timeout=30)  # raises unless it completed
    # at least one whole window after the last turn (more if turns came closer together)
    wait_until(
        lambda: value(scrape(url), "mawex_busy_poll_seconds_total") >= 0.05, 10, "a busy poll"
    )


async def test_a_failing_observer_never_stops_the_engine(caplog: Any) -> None:
    """Observers run inside the engine loop: metrics and log observers swallow their errors."""
    import logging

    import msgspec

    from mawex.core.decide import NewTask
    from mawex.journal.memory import MemoryJournal
    from mawex.master.engine import Engine, EngineSettings
    from mawex.server import metrics, ops

    engine = Engine(MemoryJournal(), EngineSettings(lease_ttl=1.0, tick_s=0.05))
    await engine.start()
    try:
        await engine.wait_leader(10)
        ops.instrument(engine)
        ops.instrument(engine)  # idempotent
        assert len(engine.observers) == 2

        class Broken:
            def observe(self, *args: Any) -> None:
                raise RuntimeError("broken histogram")

        installed = metrics.install(engine)
        working = installed.end_to_end_latency
        installed.end_to_end_latency = Broken()  # type: ignore[assignment]
        with caplog.at_level(logging.ERROR, logger="mawex.metrics"):
            await engine.submit(NewTask(group="g", id="a", payload=msgspec.Raw(b"1")))
            assert (await engine.cancel("g", "a"))["status"] == "cancelled"
        assert any(r.getMessage() == "metrics observer failed" for r in caplog.records)
        installed.end_to_end_latency = working
        # the engine still serves, and the other histograms still count
        assert await engine.submit(NewTask(group="g", id="b", payload=msgspec.Raw(b"1"))) is False
        body, _ = metrics.render(engine)
        assert b'mawex_tasks_accepted_total{group="g"} 2.0' in body
        assert b"mawex_journal_append_batch_events_count 3.0" in body
    finally:
        await engine.stop()
