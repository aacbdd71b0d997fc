"""Log format: stable JSON keys, a human text format, TTY detection, and one line per
lifecycle event from real ``mawex master`` / ``mawex worker`` processes."""

from __future__ import annotations

import io
import json
import logging
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

import mawex
from mawex.cluster import LocalCluster, Proc
from mawex.logs import JsonFormatter, TextFormatter, setup_logging
from tests.ops.conftest import start_master, url_of
from tests.polling import wait_until

STABLE_KEYS = ("ts", "time", "level", "logger", "msg")


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def restore_mawex_logger() -> Iterator[None]:
    root = logging.getLogger("mawex")
    saved = (root.handlers[:], root.level, root.propagate)
    try:
        yield
    finally:
        root.handlers[:], root.level, root.propagate = saved


def _record(**extra: Any) -> logging.LogRecord:
    record = logging.getLogger("mawex.master").makeRecord(
        "mawex.master", logging.INFO, __file__, 1, "became %s", ("leader",), None, extra=extra
    )
    record.created = 1_800_000_000.25
    return record


def test_json_lines_have_stable_keys_then_the_extras() -> None:
    line = JsonFormatter().format(_record(action="leader_elected", epoch=3, url="http://a b"))
    body = json.loads(line)
    assert list(body) == [*STABLE_KEYS, "action", "epoch", "url"]
    assert body == {
        "ts": 1_800_000_000.25,
        "time": "2027-01-15T08:00:00.250Z",
        "level": "info",
        "logger": "mawex.master",
        "msg": "became leader",
        "action": "leader_elected",
        "epoch": 3,
        "url": "http://a b",
    }
    assert "\n" not in line


def test_json_extras_never_overwrite_the_stable_keys() -> None:
    body = json.loads(JsonFormatter().format(_record(action="x", level_hint="debug")))
    assert body["level"] == "info" and body["level_hint"] == "debug"


def test_json_carries_the_exception() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.getLogger("mawex").makeRecord(
            "mawex", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    body = json.loads(JsonFormatter().format(record))
    assert body["level"] == "error" and "ValueError: boom" in body["exc"]


def test_text_format_is_for_people() -> None:
    line = TextFormatter().format(_record(action="leader_elected", epoch=3, url="http://a b"))
    assert "INFO" in line and "mawex.master" in line and "became leader" in line
    assert line.endswith('action=leader_elected epoch=3 url="http://a b"')
    assert "\x1b[" not in line
    assert "\x1b[32m" in TextFormatter(colour=True).format(_record())


@pytest.mark.usefixtures("restore_mawex_logger")
def test_auto_is_text_on_a_terminal_and_json_otherwise() -> None:
    tty, pipe = _Tty(), io.StringIO()
    setup_logging("info", "auto", stream=tty)
    logging.getLogger("mawex.x").info("hello", extra={"action": "a"})
    setup_logging("info", "auto", stream=pipe)
    logging.getLogger("mawex.x").info("hello", extra={"action": "a"})
    logging.getLogger("mawex.x").debug("hidden at info")
    assert "hello" in tty.getvalue() and not tty.getvalue().startswith("{")
    assert json.loads(pipe.getvalue())["action"] == "a"
    forced = _Tty()
    setup_logging("debug", "json", stream=forced)
    logging.getLogger("mawex.x").debug("shown at debug")
    assert json.loads(forced.getvalue())["msg"] == "shown at debug"
    with pytest.raises(ValueError, match="log format"):
        setup_logging("info", "xml")
    with pytest.raises(ValueError, match="log level"):
        setup_logging("loud", "json")


def _json_lines(proc: Proc) -> list[dict[str, Any]]:
    lines = []
    for line in proc.log().splitlines():
        if not line.strip():
            continue
        assert line.startswith("{"), f"not a JSON log line: {line!r}"
        body = json.loads(line)
        assert list(body)[: len(STABLE_KEYS)] == list(STABLE_KEYS), body
        lines.append(body)
    return lines


def _actions(proc: Proc) -> list[dict[str, Any]]:
    return [line for line in _json_lines(proc) if "action" in line]


def _find(proc: Proc, action: str, **fields: Any) -> dict[str, Any] | None:
    for line in _actions(proc):
        if line["action"] == action and all(line.get(k) == v for k, v in fields.items()):
            return line
    return None


def test_one_json_line_per_lifecycle_event(cluster: LocalCluster) -> None:
    master = start_master(cluster, "master", "--log-level", "debug", "--log-format", "json")
    url = url_of(master)
    cluster.wait_leader(timeout=30)
    cluster.start_worker(
        "worker", "mawex.examples.demo:Demo", groups="g", pod="p1", args={"delay_ms": "1"}
    )
    cluster.wait_workers(1)
    with mawex.Client([url]) as client:
        client.submit("g", {"n": 1}, id="ok")
        client.submit("g", {"fail_attempts": 1}, id="flaky", max_attempts=2)
        client.submit("g", {"fail": True}, id="bad")
        client.result("g", "ok", timeout=60)
        client.result("g", "flaky", timeout=60)
        with pytest.raises(mawex.TaskFailed):
            client.result("g", "bad", timeout=60)
    cluster.kill("worker", signal.SIGTERM)

    def has(action: str, **fields: Any) -> dict[str, Any]:
        return wait_until(
            lambda: _find(master, action, **fields),
            30,
            f"a {action} log line with {fields}",
            describe=lambda: [a["action"] for a in _actions(master)],
        )

    elected = has("leader_elected")
    assert elected["level"] == "info" and elected["epoch"] >= 1
    checked_in = has("worker_checked_in", group="g", pod="p1")
    worker_id = checked_in["worker"]
    accepted = has("task_accepted", group="g", id="ok")
    assert accepted["level"] == "debug" and accepted["logger"] == "mawex.tasks"
    dispatched = has("task_dispatched", group="g", id="ok", attempt=1)
    assert dispatched["worker"] == worker_id and dispatched["pod"] == "p1"
    has("task_finished", id="ok", status="completed", attempt=1)
    retrying = has("task_retrying", id="flaky", attempt=1)
    assert retrying["level"] == "info" and "asked to fail" in retrying["error"]
    has("task_finished", id="flaky", status="completed", attempt=2)
    failed = has("task_finished", id="bad", status="failed")
    assert failed["level"] == "info" and "asked to fail" in failed["error"]
    has("worker_checked_out", worker=worker_id)
    # exactly one line per event
    finished = [a for a in _actions(master) if a["action"] == "task_finished"]
    assert sorted(a["id"] for a in finished) == ["bad", "flaky", "ok"]
    # the worker logs as JSON too
    worker_lines = _json_lines(cluster.procs["worker"])
    assert worker_lines and all("action" in line for line in worker_lines)


def test_text_format_and_info_level_from_the_command_line(cluster: LocalCluster) -> None:
    master = start_master(cluster, "master", "--log-format", "text", "--log-level", "info")
    url = url_of(master)
    cluster.wait_leader(timeout=30)
    with mawex.Client([url]) as client:
        client.submit("g", {"n": 1}, id="quiet")
    wait_until(lambda: "action=leader_elected" in master.log(), 30, "the leader line")
    text = master.log()
    assert not any(line.startswith("{") for line in text.splitlines())
    assert "became leader" in text and " INFO " in text
    assert "task_accepted" not in text  # per-task lines are at debug level


def test_bad_log_options_are_one_clear_error() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mawex", "master", "--log-format", "xml"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "--log-format" in done.stderr and "'xml'" in done.stderr
