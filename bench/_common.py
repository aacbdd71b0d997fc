"""What the benchmark scripts share (run them as ``python bench/<script>.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

#: One HTTP client for the scripts' probes of masters: ``httpx.get`` builds a client,
#: and loads the CA bundle, per call (~25 ms of CPU, taken from the processes measured).
#: It keeps no connection, so a probe never meets one a restarted master left stale.
PROBE = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0))

#: The checkout these scripts belong to.
THIS_CHECKOUT = Path(__file__).resolve().parent.parent


def checkout_of(src: str | None) -> Path:
    """The checkout a ``--src`` names (its root, or its ``src/``); this one without.

    Exits with a clear message when there is no ``src/mawex`` there: the processes
    would otherwise import the installed mawex, and measure this checkout instead.
    """
    if src is None:
        return THIS_CHECKOUT
    root = Path(src).resolve()
    if root.name == "src" and (root / "mawex" / "__init__.py").is_file():
        root = root.parent
    if not (root / "src" / "mawex" / "__init__.py").is_file():
        raise SystemExit(
            f"--src {src}: no src/mawex there; give a checkout (git worktree add DIR "
            "COMMIT) or its src/ directory"
        )
    return root


def git_describe(checkout: Path = THIS_CHECKOUT) -> str:
    """The commit measured, with ``-dirty`` when src/ has uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(checkout), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


# -- figures -----------------------------------------------------------------------------


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``samples`` by nearest rank."""
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def wait_until(
    check: Callable[[], bool], timeout: float, what: str, *, interval: float = 0.05
) -> None:
    """Call ``check`` until it is true; ``TimeoutError`` naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:g} s")
        time.sleep(interval)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- child processes ------------------------------------------------------------------------


@dataclass
class Proc:
    """A child process of a benchmark, its output in ``log``."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    #: Started as the leader of a new session: stopping it signals its whole process group.
    group: bool = False

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def cpu_seconds(self) -> float:
        """User + system CPU of the process (all its threads) so far; 0 once it is gone."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the process (its process group if it leads one); gone is fine."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if self.group:
                os.killpg(self.pid, sig)
            else:
                os.kill(self.pid, sig)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Processes:
    """Children of a benchmark, each stopped by its PID (or its own process group)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[Proc] = []

    def spawn(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str] | None = None,
        *,
        cwd: Path | None = None,
        group: bool = False,
    ) -> Proc:
        """Start ``argv`` with its output in ``workdir/name.log``.

        ``group`` starts it in a new session, so that :meth:`stop` also ends the
        processes it forks (pool children) through its process group.
        """
        log = self.workdir / f"{name}.log"
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=cwd or self.workdir,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                start_new_session=group,
            )
        proc = Proc(name, popen, log, group)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Signal ``proc`` and wait; SIGKILL (its group too) if it has not exited in time."""
        if proc.alive():
            proc.signal(sig)
        try:
            proc.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.signal(signal.SIGKILL)
            proc.popen.wait(timeout=10)
        if proc.group:
            proc.signal(signal.SIGKILL)  # pool children that outlived their parent

    def stop_all(self) -> None:
        """Workers first (they check out), then masters; SIGKILL what does not stop."""
        for proc in self.procs:
            if proc.alive() and not proc.name.startswith("master"):
                proc.signal(signal.SIGTERM)
        for proc in self.procs:
            if not proc.name.startswith("master"):
                self.stop(proc)
        for proc in self.procs:
            self.stop(proc)
        self.procs.clear()


# -- mawex journals ---------------------------------------------------------------------------

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"


async def _pg_admin(url: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


class JournalSetup:
    """The journal URL of a benchmark mode, and what must be created and dropped for it.

    ``sqlite`` (synchronous=full, fsync'd), ``sqlite-normal``, ``postgresql`` (a fresh
    database on ``pg_url``'s server, dropped afterwards) or ``memory``.
    """

    def __init__(self, mode: str, workdir: Path, pg_url: str = DEFAULT_PG) -> None:
        self.mode = mode
        self.pg_url = pg_url
        self.pg_db: str | None = None
        if mode == "sqlite":
            self.url = f"sqlite:///{workdir / 'mawex.db'}"
        elif mode == "sqlite-normal":
            self.url = f"sqlite:///{workdir / 'mawex.db'}?synchronous=normal"
        elif mode == "postgresql":
            self.pg_db = f"mawex_bench_{secrets.token_hex(4)}"
            base, _, _ = pg_url.rpartition("/")
            self.url = f"{base}/{self.pg_db}"
        elif mode == "memory":
            self.url = "memory"
        else:
            raise ValueError(f"unknown journal mode {mode!r}")

    def create(self) -> None:
        if self.pg_db is not None:
            asyncio.run(_pg_admin(self.pg_url, f'CREATE DATABASE "{self.pg_db}"'))

    def drop(self) -> None:
        if self.pg_db is not None:
            with contextlib.suppress(Exception):
                asyncio.run(_pg_admin(self.pg_url, f'DROP DATABASE IF EXISTS "{self.pg_db}"'))


# -- a minimal HTTP/1.1 exchange -------------------------------------------------------------


def http_request(method: str, path: str, host_header: bytes, body: bytes | None) -> bytes:
    """The bytes of one HTTP/1.1 request (a JSON body, if any)."""
    head = b"%s %s HTTP/1.1\r\nhost: %s\r\n" % (method.encode(), path.encode(), host_header)
    if body is not None:
        head += b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body)
    return head + b"\r\n" + (body or b"")


async def read_http_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """Status, body and whether the server closes the connection, of one response with
    a ``content-length`` (all the benchmarks' servers send)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lower = head.lower()
    at = lower.find(b"\r\ncontent-length:")
    if at < 0:
        raise RuntimeError(f"no content-length in {head!r}")
    end = lower.index(b"\r\n", at + 2)
    content = await reader.readexactly(int(lower[at + 17 : end]))
    return int(head[9:12]), content, b"\r\nconnection: close" in lower
