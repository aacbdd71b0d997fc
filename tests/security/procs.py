"""Real ``mawex`` processes for the security tests (any scheme, any token per process)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from mawex.cluster import free_port

REPO = Path(__file__).resolve().parents[2]


class Procs:
    """Starts ``python -m mawex ...`` processes, each with its own log file; stops them all."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAWEX_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        env.update(extra or {})
        return env

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> None:
        log = open(self.workdir / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "mawex", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env(env),
            cwd=self.workdir,
        )
        log.close()

    def run(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run a command to its end; its output is also kept as a log file."""
        done = subprocess.run(
            [sys.executable, "-m", "mawex", *args],
            capture_output=True,
            text=True,
            env=self.env(env),
            cwd=self.workdir,
            timeout=timeout,
        )
        with open(self.workdir / "commands.log", "a") as log:
            log.write(f"$ mawex {' '.join(args[:1])} ...\n{done.stdout}{done.stderr}\n")
        return done

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def all_output(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.workdir.glob("*.log"))

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def master_args(journal: str, port: int, *extra: str) -> list[str]:
    return [
        "master",
        "--journal",
        journal,
        "--listen",
        f"127.0.0.1:{port}",
        "--log-format",
        "json",
        "--heartbeat",
        "0.2",
        *extra,
    ]


def wait_for(check: Callable[[], bool], timeout: float = 30.0, what: str = "it") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def healthy(url: str, **options: object) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return httpx.get(f"{url}/healthz", timeout=2, **options).status_code == 200  # type: ignore[arg-type]
        except httpx.HTTPError:
            return False

    return check


__all__ = ["Procs", "free_port", "healthy", "master_args", "wait_for"]
