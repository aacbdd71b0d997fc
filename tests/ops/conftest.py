"""Fixtures of the operability tests (dashboard, metrics, logs, CLI, deployment files, docs).

``cluster`` is a :class:`mawex.cluster.LocalCluster` in ``tmp_path``: real ``mawex``
processes on a SQLite journal, every one stopped by PID when the test ends (a failed
test prints the tail of every process log). Waiting is always polling until a
deadline, never sleeping to synchronise.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import httpx
import pytest

from mawex.cluster import LocalCluster, Proc

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts"
LOG_TAIL = 4000

_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


def missing(what: str) -> NoReturn:
    """Skip because a tool is not installed, or fail under ``MAWEX_REQUIRE_SERVICES=1``."""
    if os.environ.get("MAWEX_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{what} (and MAWEX_REQUIRE_SERVICES=1)", pytrace=False)
    pytest.skip(what)


def get_state(url: str, token: str | None = None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(f"{url}/v1/state", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def start_master(cluster: LocalCluster, name: str, *extra: str) -> Proc:
    """Start a master on a free port (picking again if another process grabbed it)."""
    for tries in range(3):
        try:
            return cluster.start_master(name, "--heartbeat", "0.2", *extra)
        except RuntimeError as exc:
            if tries == 2 or "address already in use" not in str(exc).lower():
                raise
    raise AssertionError("unreachable")


def url_of(proc: Proc) -> str:
    assert proc.url is not None
    return proc.url


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    """A LocalCluster on SQLite in ``tmp_path``; every process stopped by PID at the end."""
    made = LocalCluster(tmp_path / "cluster")
    try:
        yield made
    finally:
        made.stop_all()
        reports = request.node.stash.get(_REPORTS, {})
        if any(r.failed for r in reports.values()):
            for proc in made.procs.values():
                print(f"\n----- {proc.name} (pid {proc.pid}, exit {proc.popen.returncode})")
                print(proc.log()[-LOG_TAIL:])
