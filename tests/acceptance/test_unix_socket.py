"""Masters on Unix sockets: the command line, a worker and a client reach them there,
a killed leader is taken over, and a restarted master replaces its stale socket file."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import uvloop

import mawex
from mawex.cluster import LocalCluster, Proc, free_port
from tests.acceptance.support import ECHO, start_worker, state, wait_pod_workers
from tests.polling import wait_until


def _mawex(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mawex", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def _master(cluster: LocalCluster, name: str, sock: Path, port: int = 0) -> Proc:
    """A master on the Unix socket ``sock`` (first: what it advertises) and on TCP (for
    the test's own probes)."""
    port = port or free_port()
    listen = f"unix:{sock},127.0.0.1:{port}"
    return cluster.start_master(name, "--listen", listen, "--lease-ttl", "1", port=port)


def test_a_cluster_on_unix_sockets_fails_over(cluster: LocalCluster, sock_dir: Path) -> None:
    a_sock, b_sock = sock_dir / "a.sock", sock_dir / "b.sock"
    a = _master(cluster, "a", a_sock)
    assert cluster.wait_leader() is a
    b = _master(cluster, "b", b_sock)
    assert a.url and b.url
    masters = f"unix:{a_sock},unix:{b_sock}"
    start_worker(cluster, "worker", ECHO, groups="g", pod="p", masters=masters)
    wait_pod_workers(a.url, "p", 1)

    submitted = _mawex(
        "submit", "--master", masters, "--group", "g", "--id", "cli", "--payload", "[1]", "--wait",
        cwd=sock_dir,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    assert json.loads(submitted.stdout.splitlines()[-1])["result"] == [1]
    status = _mawex("status", "--master", masters, "--json", cwd=sock_dir)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["leader"] is True
    table = _mawex("status", "--master", masters, cwd=sock_dir)
    assert table.returncode == 0, table.stderr
    assert f"master unix:{a_sock} " in table.stdout  # as written, not percent-encoded

    async def on_uvloop() -> object:
        async with mawex.AsyncClient(masters, timeout=30) as client:
            return await client.run("g", "async", timeout=30)

    assert uvloop.run(on_uvloop()) == "async"

    with mawex.Client(masters, timeout=30, failover_timeout=30) as client:
        assert client.run("g", "before", timeout=30) == "before"
        cluster.kill("a", signal.SIGKILL)
        assert a_sock.exists()  # a killed master leaves its socket file behind
        assert cluster.wait_leader(exclude=a) is b
        wait_pod_workers(b.url, "p", 1)
        assert client.run("g", "after", timeout=30) == "after"
        assert client.masters[0].endswith("b.sock")

    # restarted on the same socket path, the old master replaces the stale file
    _master(cluster, "a", a_sock, port=int(a.url.rsplit(":", 1)[1]))
    assert not state(a.url)["leader"]
    cluster.kill("b", signal.SIGTERM)
    wait_until(lambda: not b_sock.exists(), 10, "b's socket file removed at its stop")


def test_a_socket_in_use_and_tls_on_a_socket_are_refused(
    cluster: LocalCluster, sock_dir: Path
) -> None:
    sock = sock_dir / "m.sock"
    _master(cluster, "m", sock)
    taken = _mawex("master", "--journal", "sqlite:///other.db", "--listen", f"unix:{sock}",
                   cwd=sock_dir)  # fmt: skip
    assert taken.returncode == 1  # as for a port in use: the environment said no
    assert taken.stderr.strip().splitlines()[-1].endswith("another process listens there")
    assert sock.exists()  # the running master keeps its socket
    with_tls = _mawex(
        "master", "--listen", f"unix:{sock_dir / 't.sock'}", "--tls-cert", "c.pem",
        "--tls-key", "k.pem", cwd=sock_dir,
    )  # fmt: skip
    assert with_tls.returncode == 2
    assert "TLS serves TCP addresses only" in with_tls.stderr
