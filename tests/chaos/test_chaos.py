"""Chaos end-to-end: real masters and workers, a stream of tasks, the leader killed and paused.

Each run: 3 masters (lease 1 s), 5 worker processes in 3 pods running
``StartRecord``, a client thread submitting ``MAWEX_CHAOS_TASKS`` tasks (1000 by
default) while the test performs ``MAWEX_CHAOS_EVENTS`` events (6 by default)
in turn: SIGKILL the leader (restarted as a standby), SIGKILL a worker
(restarted), SIGSTOP the leader until a standby took over then SIGCONT it.
Then :mod:`tests.chaos.checker` checks every guarantee on the topic, the
journal and the executors' records. ``MAWEX_CHAOS_SEED`` replays a run's random
choices.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .harness import ChaosConfig, ChaosRun, run_budget

_SIZE = ChaosConfig()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(60 + run_budget(_SIZE.tasks, _SIZE.events)),
]


def _run(tmp_path: Path, journal: str, master_id: str = "default") -> None:
    chaos = ChaosRun(tmp_path, journal, master_id=master_id)
    outcome = chaos.run()
    history = outcome.check()
    print("\n".join(outcome.timeline))
    print(history.summary())
    if history.problems:
        timeline = "\n".join(outcome.timeline)
        raise AssertionError(f"{history.problems[:30]}\n{history.summary()}\ntimeline:\n{timeline}")
    config = chaos.config
    assert history.acknowledged == config.tasks, "every submission was acknowledged in the end"
    # the last leader's epoch counts every takeover (a leader whose only records were
    # trimmed below a snapshot leaves no epoch in the journal, so count from the top)
    assert outcome.takeovers >= config.events * 2 // 3
    assert max(history.epochs) >= 1 + outcome.takeovers, "each takeover began a newer epoch"
    assert history.snapshot_offset > 0, "snapshots were taken (and trimmed) under chaos"


def test_chaos_sqlite(tmp_path: Path) -> None:
    _run(tmp_path, f"sqlite:///{tmp_path / 'mawex.db'}")


@pytest.mark.postgresql
def test_chaos_postgresql(tmp_path: Path, postgresql_url: str) -> None:
    _run(tmp_path, postgresql_url)


@pytest.mark.redis
def test_chaos_redis(tmp_path: Path, redis_url: str, redis_namespace: str) -> None:
    _run(tmp_path, redis_url, redis_namespace)
