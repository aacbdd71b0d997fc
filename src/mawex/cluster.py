"""A local multi-process cluster: real ``mawex master``/``mawex worker`` processes.

``mawex demo`` runs on it, and so do the end-to-end tests. Every process is
started with its own log file, found again by name, and stopped by PID.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Proc:
    """One child process."""

    name: str
    args: list[str]
    popen: subprocess.Popen[bytes]
    log_path: Path
    url: str | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive:
            os.kill(self.popen.pid, sig)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class LocalCluster:
    """Starts and tracks mawex processes under ``workdir``."""

    workdir: Path
    journal: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    token: str | None = None
    procs: dict[str, Proc] = field(default_factory=dict)
    _http: httpx.Client | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.journal is None:
            self.journal = f"sqlite:///{self.workdir / 'mawex.db'}"

    def _spawn(self, name: str, args: list[str], url: str | None = None) -> Proc:
        if name in self.procs and self.procs[name].alive:
            raise RuntimeError(f"process {name} is already running")
        log_path = self.workdir / f"{name}.log"
        env = {**os.environ, **self.env}
        env.setdefault("PYTHONUNBUFFERED", "1")
        if self.token:
            env["MAWEX_TOKEN"] = self.token
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(
                [sys.executable, "-m", "mawex", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.workdir,
            )
        proc = Proc(name, args, popen, log_path, url)
        self.procs[name] = proc
        return proc

    # -- masters -----------------------------------------------------------------------

    def start_master(
        self, name: str, *extra: str, port: int | None = None, wait: bool = True
    ) -> Proc:
        """Start ``mawex master`` on the cluster journal; waits until it answers /healthz."""
        previous = self.procs.get(name)
        port = port or (int(previous.url.rsplit(":", 1)[1]) if previous and previous.url else 0)
        port = port or free_port()
        url = f"http://127.0.0.1:{port}"
        args = [
            "master",
            "--journal",
            str(self.journal),
            "--listen",
            f"127.0.0.1:{port}",
            "--log-format",
            "json",
            *extra,
        ]
        proc = self._spawn(name, args, url)
        if wait:
            self.wait_healthy(proc)
        return proc

    @property
    def master_urls(self) -> list[str]:
        return [p.url for p in self.procs.values() if p.args[0] == "master" and p.url]

    def _get(self, url: str, timeout: float) -> httpx.Response:
        """GET ``url`` with the cluster's token. One client serves every probe: a new
        one per call would load the CA bundle each time (~25 ms of CPU, taken from the
        processes it probes); it keeps no connection, so a probe never meets a stale one."""
        if self._http is None:
            self._http = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0))
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return self._http.get(url, headers=headers, timeout=timeout)

    def wait_healthy(self, proc: Proc, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not proc.alive:
                raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.log()}")
            try:
                if self._get(f"{proc.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"{proc.name} not healthy after {timeout}s:\n{proc.log()}")

    def state_of(self, proc: Proc) -> dict[str, Any] | None:
        try:
            response = self._get(f"{proc.url}/v1/state", timeout=2)
        except httpx.HTTPError:
            return None
        body: dict[str, Any] = response.json()
        return body if response.status_code == 200 else None

    def leader(self) -> Proc | None:
        """The master process that currently says it leads."""
        for proc in self.procs.values():
            if proc.args[0] == "master" and proc.alive:
                state = self.state_of(proc)
                if state and state.get("leader"):
                    return proc
        return None

    def wait_leader(self, timeout: float = 30.0, exclude: Proc | None = None) -> Proc:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leader = self.leader()
            if leader is not None and leader is not exclude:
                return leader
            time.sleep(0.05)
        logs = "\n".join(f"--- {p.name}\n{p.log()[-3000:]}" for p in self.procs.values())
        raise TimeoutError(f"no leader after {timeout}s\n{logs}")

    # -- workers -----------------------------------------------------------------------

    def start_worker(
        self,
        name: str,
        executor: str,
        *,
        groups: str,
        pod: str,
        sandbox: str = "local",
        args: dict[str, str] | None = None,
        extra: tuple[str, ...] = (),
        masters: str | None = None,
    ) -> Proc:
        """Start ``mawex worker`` against ``masters`` (default: every known master)."""
        argv = [
            "worker",
            executor,
            "--master",
            masters or ",".join(self.master_urls),
            "--group",
            groups,
            "--pod",
            pod,
            "--sandbox",
            sandbox,
            "--log-format",
            "json",
            *extra,
        ]
        for key, value in (args or {}).items():
            argv += ["--arg", f"{key}={value}"]
        return self._spawn(name, argv)

    def wait_workers(self, count: int, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until the leader sees ``count`` connected workers."""
        deadline = time.monotonic() + timeout
        state: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            leader = self.leader()
            state = self.state_of(leader) if leader else None
            if state is not None:
                connected = [w for w in state["workers"] if w["status"] != "disconnected"]
                if len(connected) >= count:
                    return state
            time.sleep(0.05)
        raise TimeoutError(f"fewer than {count} workers after {timeout}s: {state}")

    # -- stopping ----------------------------------------------------------------------

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[name]
        proc.signal(sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            try:
                proc.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.signal(signal.SIGKILL)
                proc.popen.wait(timeout=10)

    def stop_all(self, timeout: float = 10.0) -> None:
        """SIGTERM everything (workers first), then SIGKILL what is left."""
        ordered = sorted(self.procs.values(), key=lambda p: p.args[0] == "master")
        for proc in ordered:
            if proc.popen.returncode is None and proc.alive:
                proc.signal(signal.SIGCONT)
                proc.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in ordered:
            try:
                proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.signal(signal.SIGKILL)
                proc.popen.wait(timeout=10)

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()
        http, self._http = self._http, None
        if http is not None:
            http.close()
