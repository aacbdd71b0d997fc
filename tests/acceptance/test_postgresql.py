"""Scenario 12: scenarios 1 and 5, and a takeover at once, on the PostgreSQL journal
(``MAWEX_TEST_POSTGRESQL``)."""

from __future__ import annotations

import pytest

from tests.acceptance.scenarios import (
    run_all_complete,
    run_master_sigkill,
    run_standby_takes_over_a_killed_leader,
)
from tests.acceptance.support import MakeCluster

pytestmark = pytest.mark.postgresql


def test_postgresql_all_tasks_complete(make_cluster: MakeCluster, postgresql_url: str) -> None:
    run_all_complete(make_cluster(journal=postgresql_url), count=200)


def test_postgresql_master_sigkill_loses_nothing(
    make_cluster: MakeCluster, postgresql_url: str
) -> None:
    run_master_sigkill(make_cluster(journal=postgresql_url), count=500)


def test_postgresql_standby_takes_over_a_killed_leader_at_once(
    make_cluster: MakeCluster, postgresql_url: str
) -> None:
    run_standby_takes_over_a_killed_leader(make_cluster(journal=postgresql_url))
