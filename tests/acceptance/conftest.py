"""Fixtures of the end-to-end tests.

``cluster`` is a :class:`mawex.cluster.LocalCluster` in the test's ``tmp_path`` (SQLite
journal there); ``make_cluster`` builds more of them (e.g. on a PostgreSQL journal).
Every process they start is stopped by PID when the test ends, also when it fails;
a failed test prints the tail of every process log.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mawex.cluster import LocalCluster
from tests.acceptance.support import MakeCluster

_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()
LOG_TAIL = 6000


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


def _failed(node: pytest.Item) -> bool:
    reports = node.stash.get(_REPORTS, {})
    return any(r.failed for r in reports.values())


def _dump_logs(cluster: LocalCluster) -> None:
    for proc in cluster.procs.values():
        print(f"\n----- {proc.name} (pid {proc.pid}, exit {proc.popen.returncode}) {proc.log_path}")
        print(proc.log()[-LOG_TAIL:])


def _stop(cluster: LocalCluster) -> None:
    """Workers first (they check out), then ``stop_all`` for the masters and stragglers.

    Stopping the workers before the masters keeps their ``bye`` frames from racing a
    master's own shutdown (see test_master_stop.py); ``stop_all`` SIGKILLs whatever a
    SIGTERM did not stop within 10 s.
    """
    workers = [p for p in cluster.procs.values() if p.args[0] != "master" and p.alive]
    for proc in workers:
        proc.signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    for proc in workers:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
    cluster.stop_all()


@pytest.fixture
def make_cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[MakeCluster]:
    """``make_cluster(journal=None, name="cluster", **kw)`` → a LocalCluster stopped at the end."""
    clusters: list[LocalCluster] = []

    def make(journal: str | None = None, name: str = "cluster", **kwargs: Any) -> LocalCluster:
        cluster = LocalCluster(tmp_path / name, journal=journal, **kwargs)
        clusters.append(cluster)
        return cluster

    try:
        yield make
    finally:
        running = {id(p) for c in clusters for p in c.procs.values() if p.alive}
        for cluster in clusters:
            _stop(cluster)
        killed = [
            p
            for c in clusters
            for p in c.procs.values()
            if id(p) in running and p.popen.returncode == -signal.SIGKILL
        ]
        for proc in killed:
            print(f"\nSIGTERM did not stop {proc.name} within 10 s: it was killed")
            print(proc.log()[-LOG_TAIL:])
        if _failed(request.node):
            for cluster in clusters:
                _dump_logs(cluster)
        left = [p for c in clusters for p in c.procs.values() if p.alive]
        assert not left, f"processes still running after stop_all: {[p.name for p in left]}"


@pytest.fixture
def cluster(make_cluster: MakeCluster) -> LocalCluster:
    """A LocalCluster on a SQLite journal in ``tmp_path``; everything stopped at the end."""
    return make_cluster()
