"""Scenario 10: bad input gets a clear 4xx JSON error (or a clear CLI error) and changes nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

import mawex
from mawex.cluster import LocalCluster
from tests.acceptance.support import (
    ECHO,
    TopicReader,
    start_leader,
    start_worker,
    state,
    wait_pod_workers,
)

MAX_PAYLOAD = 1000
GOOD = {"id": "good-1", "group": "g", "payload": {"ok": True}}


def _task(**fields: Any) -> dict[str, Any]:
    return {"id": "x-1", "group": "g", "payload": {"n": 1}, **fields}


# (what, method, path, body: bytes | JSON value | None, status, error code)
CASES: list[tuple[str, str, str, Any, int, str]] = [
    ("truncated JSON", "POST", "/v1/tasks", b'{"id": "x-1", "group": ', 400, "invalid"),
    ("not JSON", "POST", "/v1/tasks", b"id=x-1&group=g", 400, "invalid"),
    ("empty body", "POST", "/v1/tasks", b"", 400, "invalid"),
    ("JSON array", "POST", "/v1/tasks", [], 400, "invalid"),
    ("JSON string", "POST", "/v1/tasks", "x-1", 400, "invalid"),
    ("NaN", "POST", "/v1/tasks", b'{"id":"x-1","group":"g","payload":NaN}', 400, "invalid"),
    ("id is a number", "POST", "/v1/tasks", _task(id=5), 400, "invalid"),
    ("group is a list", "POST", "/v1/tasks", _task(group=["g"]), 400, "invalid"),
    ("max_attempts a string", "POST", "/v1/tasks", _task(max_attempts="3"), 400, "invalid"),
    ("max_attempts a bool", "POST", "/v1/tasks", _task(max_attempts=True), 400, "invalid"),
    ("max_attempts 0", "POST", "/v1/tasks", _task(max_attempts=0), 400, "invalid"),
    ("max_attempts 101", "POST", "/v1/tasks", _task(max_attempts=101), 400, "invalid"),
    ("max_attempts 1.5", "POST", "/v1/tasks", _task(max_attempts=1.5), 400, "invalid"),
    ("timeout_s negative", "POST", "/v1/tasks", _task(timeout_s=-1), 400, "invalid"),
    ("timeout_s zero", "POST", "/v1/tasks", _task(timeout_s=0), 400, "invalid"),
    ("timeout_s a string", "POST", "/v1/tasks", _task(timeout_s="1"), 400, "invalid"),
    ("unknown field", "POST", "/v1/tasks", _task(priority=1), 400, "invalid"),
    ("missing id", "POST", "/v1/tasks", {"group": "g", "payload": 1}, 400, "invalid"),
    ("missing group", "POST", "/v1/tasks", {"id": "x-1", "payload": 1}, 400, "invalid"),
    ("empty id", "POST", "/v1/tasks", _task(id=""), 400, "invalid"),
    ("id with a space", "POST", "/v1/tasks", _task(id="a b"), 400, "invalid"),
    ("id with a slash", "POST", "/v1/tasks", _task(id="a/b"), 400, "invalid"),
    ("id starting with -", "POST", "/v1/tasks", _task(id="-a"), 400, "invalid"),
    ("id non-ASCII", "POST", "/v1/tasks", _task(id="tâche"), 400, "invalid"),
    ("id of 201 chars", "POST", "/v1/tasks", _task(id="a" * 201), 400, "invalid"),
    ("empty group", "POST", "/v1/tasks", _task(group=""), 400, "invalid"),
    ("group with !", "POST", "/v1/tasks", _task(group="g!"), 400, "invalid"),
    ("group with :", "POST", "/v1/tasks", _task(group="g:h"), 400, "invalid"),
    ("group starting with _", "POST", "/v1/tasks", _task(group="_g"), 400, "invalid"),
    ("group of 65 chars", "POST", "/v1/tasks", _task(group="g" * 65), 400, "invalid"),
    (
        "oversized payload",
        "POST",
        "/v1/tasks",
        _task(payload="x" * (MAX_PAYLOAD + 1)),
        413,
        "too_large",
    ),
    ("oversized body", "POST", "/v1/tasks", b" " * (MAX_PAYLOAD + 10_000), 413, "too_large"),
    (
        "an existing id with bad options",
        "POST",
        "/v1/tasks",
        {**GOOD, "max_attempts": 0},
        400,
        "invalid",
    ),
    (
        "batch with one bad id",
        "POST",
        "/v1/tasks/batch",
        {"tasks": [_task(id="b-1"), _task(id="b-2"), _task(id="b 3"), _task(id="b-4")]},
        400,
        "invalid",
    ),
    (
        "batch with one unknown field",
        "POST",
        "/v1/tasks/batch",
        {"tasks": [_task(id="b-1"), _task(id="b-2", colour="red")]},
        400,
        "invalid",
    ),
    (
        "batch with one oversized payload",
        "POST",
        "/v1/tasks/batch",
        {"tasks": [_task(id="b-1"), _task(id="b-2", payload="x" * (MAX_PAYLOAD + 1))]},
        413,
        "too_large",
    ),
    ("batch not a list", "POST", "/v1/tasks/batch", {"tasks": "b-1"}, 400, "invalid"),
    ("batch unknown key", "POST", "/v1/tasks/batch", {"tasks": [], "all": True}, 400, "invalid"),
    ("batch truncated", "POST", "/v1/tasks/batch", b'{"tasks": [{"id": "b-1", ', 400, "invalid"),
    ("get: bad group", "GET", "/v1/tasks/g!/good-1", None, 400, "invalid"),
    ("get: bad id", "GET", "/v1/tasks/g/-bad", None, 400, "invalid"),
    ("get: unknown task", "GET", "/v1/tasks/g/nope", None, 404, "not_found"),
    ("get: bad wait", "GET", "/v1/tasks/g/good-1?wait=forever", None, 400, "invalid"),
    ("cancel: unknown task", "DELETE", "/v1/tasks/g/nope", None, 404, "not_found"),
    ("cancel: bad id", "DELETE", "/v1/tasks/g/a%20b", None, 400, "invalid"),
    ("submit: wrong method", "PUT", "/v1/tasks", GOOD, 405, "method_not_allowed"),
    ("task: wrong method", "POST", "/v1/tasks/g/good-1", GOOD, 405, "method_not_allowed"),
    ("submit: bad wait", "POST", "/v1/tasks?wait=-1", _task(id="x-1"), 400, "invalid"),
    ("results: negative from", "GET", "/v1/results?from=-1", None, 400, "invalid"),
    ("results: from not a number", "GET", "/v1/results?from=abc", None, 400, "invalid"),
    ("results: limit 0", "GET", "/v1/results?limit=0", None, 400, "invalid"),
    ("results: wait too long", "GET", "/v1/results?wait=100000", None, 400, "invalid"),
]


def _snapshot(url: str, reader: TopicReader) -> dict[str, Any]:
    view = state(url)
    return {
        "offset": view["offset"],
        "topic_next": view["topic_next"],
        "counts": view["counts"],
        "groups": view["groups"],
        "topic": list(reader.read_to_end()),
    }


def test_bad_http_input_is_rejected_clearly_and_changes_nothing(cluster: LocalCluster) -> None:
    master = start_leader(cluster, "master", "--max-payload", str(MAX_PAYLOAD))
    url = master.url
    assert url is not None
    start_worker(cluster, "worker", ECHO, groups="g", pod="p")
    wait_pod_workers(url, "p", 1)
    with mawex.Client([url]) as client, TopicReader(url) as reader:
        client.submit(GOOD["group"], GOOD["payload"], id=GOOD["id"])
        assert client.result("g", "good-1", timeout=20) == {"ok": True}
        client.submit("parked", None, id="waits")  # no worker: stays pending
        reader.wait_terminal([("g", "good-1")], timeout=10)
        before = _snapshot(url, reader)
        assert before["topic"] and before["counts"]["accepted"] == 2

        problems = []
        with httpx.Client(base_url=url, timeout=10) as http:
            for what, method, path, body, status, code in CASES:
                if isinstance(body, bytes):
                    content = body
                else:
                    content = None if body is None else json.dumps(body).encode()
                response = http.request(
                    method,
                    path,
                    content=content,
                    headers={"content-type": "application/json"} if content is not None else {},
                )
                try:
                    answer = response.json()
                except ValueError:
                    answer = None
                clear = (
                    response.status_code == status
                    and response.headers.get("content-type", "").startswith("application/json")
                    and isinstance(answer, dict)
                    and answer.get("error") == code
                    and isinstance(answer.get("detail"), str)
                    and len(answer["detail"]) > 5
                )
                if status == 405 and not response.headers.get("allow"):
                    clear = False  # a 405 names the methods the endpoint takes
                if not clear:
                    problems.append(f"{what}: {response.status_code} {response.text[:200]!r}")
            # nothing of the rejected batches was accepted
            for id in ("b-1", "b-2", "b-4", "x-1"):
                response = http.get(f"/v1/tasks/g/{id}")
                if response.status_code != 404:
                    problems.append(f"{id} exists after a rejected submission: {response.text}")
        assert not problems, "\n".join(problems)

        # the client raises the mawex errors users can catch, and changes nothing either
        for call, error in (
            (lambda: client.submit("g", {"x": 1}, id="bad id"), mawex.Rejected),
            (lambda: client.submit("g!", {"x": 1}, id="x-1"), mawex.Rejected),
            (lambda: client.submit("g", "x" * (MAX_PAYLOAD + 1), id="x-1"), mawex.TooLarge),
            (lambda: client.submit("g", {"x": float("nan")}, id="x-1"), mawex.Rejected),
            (lambda: client.submit("g", 1, id="x-1", max_attempts=0), mawex.Rejected),
            (lambda: client.get("g", "nope"), mawex.NotFound),
            (lambda: client.cancel("g", "nope"), mawex.NotFound),
        ):
            try:
                call()
            except error:
                pass
            else:
                raise AssertionError(f"no {error.__name__} raised")

        after = _snapshot(url, reader)
    assert after == before, "a rejected request changed the master's state or topic"


def test_bad_or_missing_token_is_rejected_and_changes_nothing(cluster: LocalCluster) -> None:
    cluster.token = "s3cret-token"
    master = start_leader(cluster, "master", "--token", "s3cret-token")
    url = master.url
    assert url is not None
    good = {"Authorization": "Bearer s3cret-token"}
    with httpx.Client(base_url=url, timeout=10) as http:
        assert http.get("/healthz").status_code == 200  # the only open endpoint
        ok = http.post("/v1/tasks", json=GOOD, headers=good)
        assert ok.status_code == 202, ok.text
        before = http.get("/v1/state", headers=good).json()
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-token"}):
            for method, path, body in (
                ("POST", "/v1/tasks", {**GOOD, "id": "sneaky"}),
                ("POST", "/v1/tasks/batch", {"tasks": [{**GOOD, "id": "sneaky"}]}),
                ("DELETE", "/v1/tasks/g/good-1", None),
                ("GET", "/v1/state", None),
                ("GET", "/v1/results?from=0", None),
                ("GET", "/v1/tasks/g/good-1", None),
            ):
                response = http.request(method, path, json=body, headers=headers)
                assert response.status_code == 401, (headers, path, response.text)
                assert response.json()["error"] == "unauthorized"
        after = http.get("/v1/state", headers=good).json()
        assert http.get("/v1/tasks/g/sneaky", headers=good).status_code == 404
    assert (after["offset"], after["counts"]) == (before["offset"], before["counts"])
    with mawex.Client([url], token="wrong") as client:
        try:
            client.submit("g", 1, id="sneaky")
        except mawex.Unauthorized:
            pass
        else:
            raise AssertionError("a wrong token was accepted")


def _mawex(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mawex", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )


def _one_clear_line(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert result.returncode != 0, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line, got:\n{result.stderr}"
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def test_worker_with_an_unknown_executor_exits_with_one_clear_line(tmp_path: Path) -> None:
    common = ("--master", "http://127.0.0.1:9", "--group", "g", "--pod", "p")
    _one_clear_line(
        _mawex("worker", "no_such_module_xyz:run", *common, cwd=tmp_path),
        "no_such_module_xyz",
    )
    _one_clear_line(
        _mawex("worker", "mawex.examples.demo:no_such_executor", *common, cwd=tmp_path),
        "no_such_executor",
    )
    _one_clear_line(_mawex("worker", "not a reference", *common, cwd=tmp_path), "module:attr")
    _one_clear_line(
        _mawex("worker", "mawex.examples.demo:Record", *common, "--arg", "nope=1", cwd=tmp_path),
        "Record",
    )
    _one_clear_line(_mawex("worker", ECHO, *common[:-2], "--pod", "bad pod", cwd=tmp_path), "pod")


def test_master_with_an_unparseable_journal_url_exits_with_a_clear_message(
    tmp_path: Path,
) -> None:
    listen = ("--listen", "127.0.0.1:0")
    for url, needle in (
        ("nosuch://db", "nosuch"),
        ("no-scheme-at-all", "scheme"),
        ("sqlite://", "path"),
        ("sqlite:///:memory:", "memory"),
        ("sqlite:///x.db?synchronous=sometimes", "synchronous"),
        ("postgresql://host:notaport/db", "port"),
    ):
        line = _one_clear_line(_mawex("master", "--journal", url, *listen, cwd=tmp_path), needle)
        assert "journal" in line.lower() or "sqlite" in line.lower(), line
    assert not list(tmp_path.iterdir()), "a rejected journal URL created files"


def test_ids_and_groups_with_a_trailing_newline_are_rejected(cluster: LocalCluster) -> None:
    """Regression: ids and names were checked with ``re.match`` and a ``$`` anchor, which
    also matches before a final newline, so ``"a\\n"`` passed as an id and ``"g\\n"`` as a
    group (fixed in 109c69f: names must match whole)."""
    master = start_leader(cluster)
    url = master.url
    assert url is not None
    before = state(url)
    accepted = []
    with httpx.Client(base_url=url, timeout=10) as http:
        for task in (_task(id="a\n"), _task(group="g\n"), _task(id="b\n", group="h\n")):
            response = http.post("/v1/tasks", json=task)
            if response.status_code != 400 or response.json().get("error") != "invalid":
                accepted.append(f"{task['group']!r}/{task['id']!r}: {response.status_code}")
    after = state(url)
    assert not accepted, f"accepted despite a newline: {accepted}"
    assert after["offset"] == before["offset"]
