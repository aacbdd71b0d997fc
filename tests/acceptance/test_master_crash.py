"""Scenario 5: kill -9 the master (and every process) mid-run; nothing acknowledged is lost."""

from __future__ import annotations

import signal

import mawex
from mawex.cluster import LocalCluster
from tests.acceptance.scenarios import run_master_sigkill, run_restart_everything
from tests.acceptance.support import ECHO, start_worker, wait_pod_workers

#: Longer than any wait below: a takeover within them cannot be the lease lapsing.
LONG_LEASE_TTL = "300"


def test_master_sigkill_mid_run_and_restart_on_the_same_journal(cluster: LocalCluster) -> None:
    run_master_sigkill(cluster, count=600)


def test_restart_every_process_loses_nothing(cluster: LocalCluster) -> None:
    run_restart_everything(cluster, count=400)


def test_a_standby_takes_over_a_killed_leader_without_waiting_for_its_lease(
    cluster: LocalCluster,
) -> None:
    a = cluster.start_master("a", "--lease-ttl", LONG_LEASE_TTL)
    assert cluster.wait_leader() is a
    b = cluster.start_master("b", "--lease-ttl", LONG_LEASE_TTL)
    assert a.url and b.url
    start_worker(cluster, "worker", ECHO, groups="g", pod="p")
    wait_pod_workers(a.url, "p", 1)
    with mawex.Client([a.url, b.url], timeout=30, failover_timeout=60) as client:
        assert client.run("g", "before", timeout=30) == "before"
        cluster.kill("a", signal.SIGKILL)
        assert cluster.wait_leader(exclude=a, timeout=60) is b
        wait_pod_workers(b.url, "p", 1)
        assert client.run("g", "after", timeout=30) == "after"
