"""Scenario 1 and a takeover at once on the Redis journal (``MAWEX_TEST_REDIS``)."""

from __future__ import annotations

import pytest

from tests.acceptance.scenarios import run_all_complete, run_standby_takes_over_a_killed_leader
from tests.acceptance.support import MakeCluster

pytestmark = pytest.mark.redis


def test_redis_all_tasks_complete(
    make_cluster: MakeCluster, redis_url: str, redis_namespace: str
) -> None:
    run_all_complete(
        make_cluster(journal=redis_url), count=200, master_args=("--master-id", redis_namespace)
    )


def test_redis_standby_takes_over_a_killed_leader_at_once(
    make_cluster: MakeCluster, redis_url: str, redis_namespace: str
) -> None:
    run_standby_takes_over_a_killed_leader(
        make_cluster(journal=redis_url), master_args=("--master-id", redis_namespace)
    )
