"""Scenario 5: kill -9 the master (and every process) mid-run; nothing acknowledged is lost."""

from __future__ import annotations

from mawex.cluster import LocalCluster
from tests.acceptance.scenarios import (
    run_master_sigkill,
    run_restart_everything,
    run_standby_takes_over_a_killed_leader,
)


def test_master_sigkill_mid_run_and_restart_on_the_same_journal(cluster: LocalCluster) -> None:
    run_master_sigkill(cluster, count=600)


def test_restart_every_process_loses_nothing(cluster: LocalCluster) -> None:
    run_restart_everything(cluster, count=400)


def test_a_standby_takes_over_a_killed_leader_without_waiting_for_its_lease(
    cluster: LocalCluster,
) -> None:
    run_standby_takes_over_a_killed_leader(cluster)
