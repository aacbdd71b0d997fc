"""The ``mawex`` command line in subprocesses: help text names every MAWEX_* variable,
expected failures are one line and a non-zero exit (never a traceback), and output is
JSON for programs and tables / coloured lines for people."""

from __future__ import annotations

import json
import os
import pty
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import click
import pytest

from mawex.cli.main import cli
from mawex.cli.options import envvar_for
from mawex.cluster import LocalCluster, free_port
from tests.ops.conftest import start_master, url_of

TIMEOUT = 120


def run(*args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "mawex", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        input=stdin,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


def one_error_line(done: Any, code: int, *fragments: str) -> str:
    """The command failed with ``code`` and said so in exactly one line on stderr."""
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _commands() -> list[tuple[str, click.Command]]:
    return sorted(cli.commands.items())


# -- help ------------------------------------------------------------------------------


def test_top_level_help_lists_every_command() -> None:
    done = run("--help")
    assert done.returncode == 0
    for name, command in _commands():
        if not command.hidden:
            assert name in done.stdout
    assert "MAWEX_<OPTION>" in done.stdout
    version = run("--version")
    assert version.returncode == 0 and version.stdout.startswith("mawex, version ")


@pytest.mark.parametrize("name", [name for name, _ in _commands()])
def test_every_option_shows_its_environment_variable(name: str) -> None:
    command = cli.commands[name]
    done = run(name, "--help")
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())  # help text wraps long lines
    options = [p for p in command.params if isinstance(p, click.Option) and not p.hidden]
    assert options
    for param in options:
        flag = max(param.opts, key=len)
        assert flag in text, f"{flag} missing from 'mawex {name} --help'"
        expected = param.envvar if isinstance(param.envvar, str) else None
        assert expected, f"{flag} of mawex {name} has no environment variable"
        assert expected.startswith("MAWEX_"), expected
        assert f"env var: {expected}" in text, f"{expected} not shown for {flag} of {name}"
        if expected != "MAWEX_MASTER":  # --master is stored as `masters`
            assert expected == envvar_for(flag), (flag, expected)


def test_environment_variables_set_options_and_flags_win(tmp_path: Path) -> None:
    port = free_port()
    env = {"MAWEX_MASTER": f"http://127.0.0.1:{port}", "MAWEX_RETRY_FOR": "0.3"}
    done = run("status", env=env)
    one_error_line(done, 1, f"127.0.0.1:{port}", "within 0.3s")
    done = run("status", "--retry-for", "0.2", env=env)
    one_error_line(done, 1, "within 0.2s")


# -- expected failures -----------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("status",),
        ("submit", "--group", "g", "--payload", "{}"),
        ("results", "--follow"),
    ],
)
def test_unreachable_master_is_one_line(args: tuple[str, ...]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    done = run(*args, "--master", url, "--retry-for", "0.5")
    one_error_line(done, 1, "mawex: error: no master answered within", url)
    assert time.monotonic() - started < 60


class _Standby(BaseHTTPRequestHandler):
    """A master that is a standby with no known leader: every request gets 503 not_leader."""

    def _answer(self) -> None:
        body = json.dumps(
            {"error": "not_leader", "detail": "this master is a standby", "leader": None}
        ).encode()
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def standby_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Standby)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_no_leader_is_one_line(standby_url: str) -> None:
    done = run(
        "submit", "--master", standby_url, "--group", "g", "--payload", "1", "--retry-for", "0.5"
    )
    one_error_line(done, 1, "mawex: error:", "not leader, leader unknown")


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    one_error_line(
        run("submit", "--master", url, "--group", "g", "--payload", "{bad"),
        2,
        "mawex: error: --payload is not JSON",
    )
    one_error_line(
        run("submit", "--master", url, "--group", "no spaces", "--payload", "1"),
        2,
        "invalid group 'no spaces'",
    )
    one_error_line(
        run("submit", "--master", url, "--payload", "1"),
        2,
        "mawex submit: error: --group is required with --payload",
        "'mawex submit --help'",
    )
    one_error_line(run("submit", "--master", url, "--group", "g"), 2, "exactly one of")
    one_error_line(run("status", "--master", url, "--bogus"), 2, "No such option", "--bogus")
    one_error_line(run("results", "--master", url, "--from", "-1"), 2, "'--from'")
    one_error_line(run("frobnicate"), 2, "No such command 'frobnicate'")
    missing = tmp_path / "missing.jsonl"
    one_error_line(
        run("submit", "--master", url, "--group", "g", "--file", str(missing)),
        2,
        f"cannot read {missing}",
    )
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "payload": 1}\n{"id": "b", oops}\n')
    one_error_line(
        run("submit", "--master", url, "--group", "g", "--file", str(bad)),
        2,
        f"{bad}:2: not JSON",
    )
    unknown = tmp_path / "unknown.jsonl"
    unknown.write_text('{"id": "a", "payload": 1, "priority": 9}\n')
    one_error_line(
        run("submit", "--master", url, "--group", "g", "--file", str(unknown)),
        2,
        "unknown field(s) priority",
    )
    one_error_line(
        run("submit", "--master", url, "--file", "-", stdin='{"id": "a"}\n'),
        2,
        'no "group" and no --group default',
    )
    one_error_line(run("master", "--journal", "ftp://x/y"), 2, "mawex: error:", "ftp")
    one_error_line(run("master", "--listen", "nowhere"), 2, "--listen takes HOST:PORT or unix:PATH")
    one_error_line(run("master", "--busy-poll", "2"), 2, "'--busy-poll'", "0<=x<=1")


def test_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = run(
            "master",
            "--journal",
            f"sqlite:///{tmp_path / 'm.db'}",
            "--listen",
            f"127.0.0.1:{port}",
            "--log-format",
            "json",
        )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("mawex: error:")
    assert "in use" in done.stderr.splitlines()[-1]


# -- against a real master -------------------------------------------------------------


def _tty_run(*args: str) -> str:
    """Run a command with stdout on a pseudo-terminal; returns what it printed there."""
    leader_fd, follower_fd = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mawex", *args],
        stdout=follower_fd,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "COLUMNS": "200", "TERM": "xterm-256color"},
    )
    os.close(follower_fd)
    chunks: list[bytes] = []
    deadline = time.monotonic() + TIMEOUT
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader_fd], [], [], 0.2)
            if ready:
                try:
                    data = os.read(leader_fd, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        assert proc.wait(timeout=30) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
        os.close(leader_fd)
    return b"".join(chunks).decode(errors="replace")


def test_submit_status_and_results_output(cluster: LocalCluster, tmp_path: Path) -> None:
    master = start_master(cluster, "master")
    url = url_of(master)
    cluster.wait_leader(timeout=30)
    cluster.start_worker(
        "worker", "mawex.examples.demo:Demo", groups="etl", pod="pod-1", args={"delay_ms": "1"}
    )
    cluster.wait_workers(1)

    tasks = tmp_path / "tasks.jsonl"
    lines = [json.dumps({"id": f"t{i}", "payload": {"n": i}}) for i in range(25)]
    lines.append(json.dumps({"id": "bad", "payload": {"fail": True}}))
    tasks.write_text("\n".join(lines) + "\n")
    done = run("submit", "--master", url, "--group", "etl", "--file", str(tasks), "--wait")
    assert done.returncode == 1, done.stderr  # one task failed
    out = [json.loads(line) for line in done.stdout.splitlines()]
    assert out == [{"accepted": 26, "duplicates": 0}, {"results": {"completed": 25, "failed": 1}}]
    assert "submitted 26 tasks: 26 accepted, 0 duplicates" in done.stderr
    assert "finished: completed 25 · failed 1" in done.stderr
    again = run("submit", "--master", url, "--group", "etl", "--file", str(tasks))
    assert again.returncode == 0
    assert json.loads(again.stdout) == {"accepted": 0, "duplicates": 26}

    one = run(
        "submit",
        "--master",
        url,
        "--group",
        "etl",
        "--id",
        "one",
        "--payload",
        '{"n": 2}',
        "--wait",
    )
    assert one.returncode == 0, one.stderr
    receipt, result = (json.loads(line) for line in one.stdout.splitlines())
    assert receipt == {"id": "one", "group": "etl", "status": "accepted", "duplicate": False}
    assert result["status"] == "completed" and result["result"]["sum"] == 2

    status = run("status", "--master", url, "--json")
    assert status.returncode == 0
    state = json.loads(status.stdout)
    assert state["leader"] is True and state["counts"]["completed"] == 26
    table = run("status", "--master", url)
    assert table.returncode == 0
    for text in ("leader", "groups", "pods", "workers", "pod-1", "etl", "local", "idle"):
        assert text in table.stdout, text
    assert state["workers"][0]["id"] in table.stdout

    # not a terminal: JSON lines; --json forces them on a terminal too
    piped = run("results", "--master", url, "--from", "1")
    events = [json.loads(line) for line in piped.stdout.splitlines()]
    assert [e["offset"] for e in events] == list(range(1, len(events) + 1))
    assert {e["type"] for e in events} == {"scheduled", "completed", "failed"}
    pretty = _tty_run("results", "--master", url, "--from", "1")
    assert "{" not in pretty.splitlines()[0]
    assert "completed" in pretty and "etl/t0 #1" in pretty and "\x1b[" in pretty
    assert "ValueError: demo task bad asked to fail" in pretty
    forced = _tty_run("results", "--master", url, "--from", "1", "--json")
    assert json.loads(forced.splitlines()[0])["offset"] == 1

    # a wrong token is rejected input: one line, exit 2
    cluster.stop_all()
    cluster.token = "right"
    secured = start_master(cluster, "master")
    one_error_line(
        run("status", "--master", url_of(secured), "--token", "wrong"),
        2,
        "mawex: error:",
        "token",
    )
    assert run("status", "--master", url_of(secured), "--token", "right", "--json").returncode == 0
