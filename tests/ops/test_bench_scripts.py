"""The benchmark scripts run: tiny sizes, real masters, every figure line printed.

Their figures are not checked here (timing belongs to the benchmarks themselves):
only that a script anyone reruns from the README still works end to end.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import POSTGRESQL_URL
from tests.ops.conftest import REPO

TIMEOUT = 300


def _run(script: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 0, f"{script} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _figures(output: str) -> dict[str, str]:
    lines = (line.split("#", 1)[0].split() for line in output.splitlines())
    return {parts[0]: " ".join(parts[1:]) for parts in lines if len(parts) >= 2}


def test_scale_quick(tmp_path: Path) -> None:
    figures = _figures(_run("scale.py", "--quick", "--workdir", str(tmp_path)))
    for phase in ("pending", "dispatch", "takeover", "fanout"):
        assert any(name.startswith(phase + "_") for name in figures), (phase, figures)
    assert figures["takeover_restart_snapshot_20k_s"]
    assert figures["fanout_ws_limit"].startswith("held"), figures["fanout_ws_limit"]


@pytest.mark.parametrize(
    "backend",
    [
        "sqlite",
        pytest.param("postgresql", marks=pytest.mark.postgresql),
        pytest.param("redis", marks=pytest.mark.redis),
    ],
)
def test_failover_one_kill(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    extra = []
    if backend == "postgresql":
        request.getfixturevalue("postgresql_template")  # the server answers (or skip)
        extra = ["--postgresql", POSTGRESQL_URL]
    elif backend == "redis":
        extra = ["--redis", request.getfixturevalue("redis_url")]
    output = _run(
        "failover.py",
        "--backends", backend,
        "--sizes", "500",
        "--kills", "1",
        "--lease-ttl", "1",
        "--workdir", str(tmp_path),
        *extra,
    )  # fmt: skip
    figures = _figures(output)
    for name in ("replay", "cold_rebuild", "startup", "failover"):
        assert any(key.startswith(f"{name}.{backend}.500.") for key in figures), (name, output)


@pytest.mark.parametrize(
    "args",
    [
        ("--journal", "sqlite"),
        ("--journal", "sqlite-normal", "--busy-poll", "0.0005", "--inline", "--unix"),
    ],
    ids=["defaults", "every-setting"],
)
def test_roundtrip(args: tuple[str, ...]) -> None:
    output = _run("roundtrip.py", "--tasks", "50", *args)
    assert "tasks 50: p50" in output, output


def test_throughput() -> None:
    figures = _figures(_run("throughput.py", "--tasks", "300"))
    assert any(name.startswith("enqueue_") for name in figures), figures


def test_sandbox_overhead() -> None:
    output = _run("sandbox_overhead.py", "--tasks", "20")
    assert "forked-warm" in output and "forked-spawn" in output, output
