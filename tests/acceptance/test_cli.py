"""Scenario 11: the command line against a real cluster, and ``mawex demo``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import mawex
from mawex.cluster import LocalCluster
from tests.acceptance.support import (
    DEMO,
    REPO,
    TopicReader,
    start_leader,
    start_worker,
    wait_pod_workers,
)


def _mawex(
    *args: str, cwd: Path, timeout: float = 90, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``mawex``; on a timeout kill its whole session (the demo starts children)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mawex", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"mawex {' '.join(args)} timed out:\n{out}\n{err}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_cli_submit_status_and_results(cluster: LocalCluster, tmp_path: Path) -> None:
    master = start_leader(cluster)
    url = master.url
    assert url is not None
    start_worker(cluster, "worker", DEMO, groups="etl,reports", pod="p", args={"delay_ms": "1"})
    wait_pod_workers(url, "p", 2)

    tasks = tmp_path / "tasks.jsonl"
    lines = [
        json.dumps({"id": f"t-{i:02d}", "payload": {"values": [i, i]}})
        if i % 3
        else json.dumps({"id": f"t-{i:02d}", "group": "reports", "payload": {"n": i}})
        for i in range(30)
    ]
    tasks.write_text("\n".join(lines) + "\n\n")
    done = _mawex(
        "submit",
        "--master",
        url,
        "--group",
        "etl",
        "--file",
        str(tasks),
        "--wait",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done
    assert _json_lines(done.stdout) == [
        {"accepted": 30, "duplicates": 0},
        {"results": {"completed": 30}},
    ]
    # progress (a bar on a terminal) and a summary for people go to stderr
    assert "submit" in done.stderr and "30" in done.stderr, done.stderr

    # the same file again: all duplicates, still all completed
    again = _mawex(
        "submit", "--master", url, "--group", "etl", "--file", str(tasks), "--wait", cwd=tmp_path
    )
    assert again.returncode == 0, again
    assert _json_lines(again.stdout) == [
        {"accepted": 0, "duplicates": 30},
        {"results": {"completed": 30}},
    ]

    # one task, and a file where one task fails: --wait exits 1 and says so
    one = _mawex(
        "submit",
        "--master",
        url,
        "--group",
        "etl",
        "--id",
        "single",
        "--payload",
        '{"values": [1, 2, 3]}',
        "--wait",
        cwd=tmp_path,
    )
    assert one.returncode == 0, one
    accepted, result = _json_lines(one.stdout)
    assert accepted == {"id": "single", "group": "etl", "status": "accepted", "duplicate": False}
    assert result["status"] == "completed" and result["result"]["sum"] == 6, result
    failing = tmp_path / "failing.jsonl"
    failing.write_text(
        json.dumps({"id": "f-ok", "payload": {"values": [1]}})
        + "\n"
        + json.dumps({"id": "f-bad", "payload": {"fail": True}, "max_attempts": 2})
        + "\n"
    )
    failed = _mawex(
        "submit", "--master", url, "--group", "etl", "--file", str(failing), "--wait", cwd=tmp_path
    )
    assert failed.returncode == 1, failed
    assert _json_lines(failed.stdout)[-1] == {"results": {"completed": 1, "failed": 1}}
    # a bad file is refused before anything is sent
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "fine", "payload": 1}) + "\n" + '{"id": "x", "colour": 1}\n')
    refused = _mawex("submit", "--master", url, "--group", "etl", "--file", str(bad), cwd=tmp_path)
    assert refused.returncode != 0 and "colour" in refused.stderr, refused

    status = _mawex("status", "--master", url, "--json", cwd=tmp_path)
    assert status.returncode == 0, status
    view = json.loads(status.stdout)
    assert view["leader"] is True and view["epoch"] >= 1
    assert sorted(w["group"] for w in view["workers"]) == ["etl", "reports"]
    assert {w["pod"] for w in view["workers"]} == {"p"}
    counts = view["counts"]
    assert (counts["accepted"], counts["completed"], counts["failed"]) == (33, 32, 1), counts
    assert view["counts"]["pending"] == 0 and view["counts"]["running"] == 0
    text = _mawex("status", "--master", url, cwd=tmp_path)
    assert text.returncode == 0 and "leader" in text.stdout and "reports" in text.stdout, text

    results = _mawex("results", "--master", url, "--from", "0", cwd=tmp_path)
    assert results.returncode == 0, results
    printed = _json_lines(results.stdout)
    with TopicReader(url) as reader:
        topic = reader.read_to_end()
    assert [(e["offset"], e["type"], e["group"], e["id"]) for e in printed] == [
        (e["offset"], e["type"], e["group"], e["id"]) for e in topic
    ]
    assert any(e["type"] == "retrying" for e in printed) and any(
        e["type"] == "failed" and "asked to fail" in e["error"] for e in printed
    )
    tail = _mawex("results", "--master", url, "--from", str(len(topic) - 2), cwd=tmp_path)
    assert [e["offset"] for e in _json_lines(tail.stdout)] == [
        len(topic) - 2,
        len(topic) - 1,
        len(topic),
    ]


def test_worker_sandbox_inline_runs_plain_executors_on_its_loop(cluster: LocalCluster) -> None:
    cluster.env["PYTHONPATH"] = str(REPO)  # the executor is in this repository's tests
    url = start_leader(cluster).url
    assert url is not None
    executor = "tests.sandbox.executors:thread_name"
    start_worker(cluster, "inline", executor, groups="inl", pod="pi", extra=["--sandbox-inline"])
    start_worker(cluster, "threaded", executor, groups="thr", pod="pt")
    wait_pod_workers(url, "pi", 1)
    wait_pod_workers(url, "pt", 1)
    with mawex.Client(url, timeout=30) as client:
        assert [client.run("inl", i, timeout=30) for i in range(3)] == ["MainThread"] * 3
        assert client.run("thr", None, timeout=30) == "mawex-local-executor"


def test_worker_sandbox_inline_keeps_its_session_through_calls_of_seconds(
    cluster: LocalCluster,
) -> None:
    """Calls back to back, each holding the worker's loop longer than its ping deadline
    (3 s) but under the master's worker timeout (5 s): a pong read late, after a call,
    is no sign of a frozen master, and the worker keeps its session."""
    cluster.env["PYTHONPATH"] = str(REPO)
    url = start_leader(cluster).url
    assert url is not None
    executor = "tests.sandbox.executors:sleeps"
    worker = start_worker(
        cluster, "inline", executor, groups="slow", pod="ps", extra=["--sandbox-inline"]
    )
    wait_pod_workers(url, "ps", 1)
    with mawex.Client(url, timeout=60) as client:
        ids = [client.submit("slow", {"seconds": 3.5}).id for _ in range(3)]
        assert [client.result("slow", id, timeout=60) for id in ids] == [{"slept": 3.5}] * 3
        assert [client.get("slow", id).attempt for id in ids] == [1, 1, 1]
    assert "master_unresponsive" not in worker.log()


def test_worker_sandbox_inline_is_refused_with_another_sandbox(tmp_path: Path) -> None:
    argv = ["worker", DEMO, "--master", "http://127.0.0.1:9", "--group", "g", "--pod", "p"]
    result = _mawex(*argv, "--sandbox", "forked", "--sandbox-inline", cwd=tmp_path)
    assert result.returncode == 2
    assert "--sandbox-inline is for --sandbox local, not forked" in result.stderr


def test_cli_demo_loses_no_task(tmp_path: Path) -> None:
    demo = _mawex("demo", "--tasks", "60", "--workdir", str(tmp_path / "demo"), cwd=tmp_path)
    assert demo.returncode == 0, demo
    assert "no task lost" in demo.stdout, demo.stdout
    assert "60 tasks" in demo.stdout, demo.stdout
