"""Distinct classes of bad input, each rejected with a clear 4xx (or, on a WebSocket,
an ``error`` frame or a refused handshake) and leaving the master's state unchanged."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from mawex.wire.api import ApiLimits

from .conftest import CLIENT_TOKEN, WORKER_TOKEN, ThreadMaster, counts, hello, ws_url

AUTH = {"Authorization": f"Bearer {CLIENT_TOKEN}"}
WAUTH = {"Authorization": f"Bearer {WORKER_TOKEN}"}
LIMITS = ApiLimits(max_payload_bytes=1000, max_batch_tasks=5, max_batch_bytes=50_000)


def _task(**fields: Any) -> dict[str, Any]:
    return {"id": "x-1", "group": "g", "payload": {"n": 1}, **fields}


def _batch(*tasks: dict[str, Any]) -> dict[str, Any]:
    return {"tasks": list(tasks)}


# (class, method, path, body: bytes | JSON | None, headers, status, error code)
HTTP: list[tuple[str, str, str, Any, dict[str, str], int, str]] = [
    ("truncated JSON", "POST", "/v1/tasks", b'{"id": "x-1", "group": ', AUTH, 400, "invalid"),
    ("not JSON", "POST", "/v1/tasks", b"id=x-1&group=g", AUTH, 400, "invalid"),
    ("empty body", "POST", "/v1/tasks", b"", AUTH, 400, "invalid"),
    ("invalid UTF-8", "POST", "/v1/tasks", b'{"id":"\xff\xfe","group":"g"}', AUTH, 400, "invalid"),
    ("JSON array body", "POST", "/v1/tasks", [], AUTH, 400, "invalid"),
    ("JSON string body", "POST", "/v1/tasks", "x-1", AUTH, 400, "invalid"),
    (
        "NaN in payload",
        "POST",
        "/v1/tasks",
        b'{"id":"x","group":"g","payload":NaN}',
        AUTH,
        400,
        "invalid",
    ),
    ("id of wrong type", "POST", "/v1/tasks", _task(id=5), AUTH, 400, "invalid"),
    ("group of wrong type", "POST", "/v1/tasks", _task(group=["g"]), AUTH, 400, "invalid"),
    ("max_attempts a string", "POST", "/v1/tasks", _task(max_attempts="3"), AUTH, 400, "invalid"),
    ("max_attempts a bool", "POST", "/v1/tasks", _task(max_attempts=True), AUTH, 400, "invalid"),
    ("max_attempts below 1", "POST", "/v1/tasks", _task(max_attempts=0), AUTH, 400, "invalid"),
    ("max_attempts over 100", "POST", "/v1/tasks", _task(max_attempts=101), AUTH, 400, "invalid"),
    (
        "max_attempts fractional",
        "POST",
        "/v1/tasks",
        _task(max_attempts=1.5),
        AUTH,
        400,
        "invalid",
    ),
    ("timeout_s negative", "POST", "/v1/tasks", _task(timeout_s=-1), AUTH, 400, "invalid"),
    ("timeout_s a string", "POST", "/v1/tasks", _task(timeout_s="1"), AUTH, 400, "invalid"),
    ("unknown field", "POST", "/v1/tasks", _task(priority=1), AUTH, 400, "invalid"),
    ("missing id", "POST", "/v1/tasks", {"group": "g"}, AUTH, 400, "invalid"),
    ("missing group", "POST", "/v1/tasks", {"id": "x-1"}, AUTH, 400, "invalid"),
    ("empty id", "POST", "/v1/tasks", _task(id=""), AUTH, 400, "invalid"),
    ("id with a space", "POST", "/v1/tasks", _task(id="a b"), AUTH, 400, "invalid"),
    ("id with a slash", "POST", "/v1/tasks", _task(id="a/b"), AUTH, 400, "invalid"),
    ("id not ASCII", "POST", "/v1/tasks", _task(id="tâche"), AUTH, 400, "invalid"),
    ("id too long", "POST", "/v1/tasks", _task(id="a" * 201), AUTH, 400, "invalid"),
    ("group bad charset", "POST", "/v1/tasks", _task(group="g!"), AUTH, 400, "invalid"),
    ("group too long", "POST", "/v1/tasks", _task(group="g" * 65), AUTH, 400, "invalid"),
    (
        "payload over the limit",
        "POST",
        "/v1/tasks",
        _task(payload="p" * 2000),
        AUTH,
        413,
        "too_large",
    ),
    (
        "batch over the task limit",
        "POST",
        "/v1/tasks/batch",
        _batch(*(_task(id=f"b{i}") for i in range(6))),
        AUTH,
        413,
        "too_large",
    ),
    (
        "batch with one bad task",
        "POST",
        "/v1/tasks/batch",
        _batch(_task(id="ok-1"), _task(id="bad id")),
        AUTH,
        400,
        "invalid",
    ),
    (
        "batch unknown field",
        "POST",
        "/v1/tasks/batch",
        {"tasks": [], "x": 1},
        AUTH,
        400,
        "invalid",
    ),
    ("batch tasks not a list", "POST", "/v1/tasks/batch", {"tasks": {}}, AUTH, 400, "invalid"),
    (
        "body over the size limit",
        "POST",
        "/v1/tasks/batch",
        b" " * 60_000,
        AUTH,
        413,
        "too_large",
    ),
    ("no token", "POST", "/v1/tasks", _task(), {}, 401, "unauthorized"),
    (
        "wrong token",
        "POST",
        "/v1/tasks",
        _task(),
        {"Authorization": "Bearer nope"},
        401,
        "unauthorized",
    ),
    (
        "worker token on a client endpoint",
        "POST",
        "/v1/tasks",
        _task(),
        WAUTH,
        401,
        "unauthorized",
    ),
    ("bad group in a path", "GET", "/v1/tasks/g!/x-1", None, AUTH, 400, "invalid"),
    ("bad id in a path", "DELETE", "/v1/tasks/g/" + "i" * 201, None, AUTH, 400, "invalid"),
    ("unknown task", "DELETE", "/v1/tasks/g/nobody", None, AUTH, 404, "not_found"),
    ("negative offset", "GET", "/v1/results?from=-1", None, AUTH, 400, "invalid"),
    ("zero limit", "GET", "/v1/results?limit=0", None, AUTH, 400, "invalid"),
    ("wait not a number", "GET", "/v1/results?wait=soon", None, AUTH, 400, "invalid"),
    ("wait too long", "GET", "/v1/tasks/g/x-1?wait=1000", None, AUTH, 400, "invalid"),
    ("unknown query parameter", "GET", "/v1/state?debug=1", None, AUTH, 400, "invalid"),
    ("repeated query parameter", "GET", "/v1/results?from=1&from=2", None, AUTH, 400, "invalid"),
    ("unknown long parameter", "GET", "/v1/state?" + "x" * 150 + "=1", None, AUTH, 400, "invalid"),
]


def _ws_error(url: str, headers: dict[str, str], frames: list[str | bytes]) -> str:
    """Send ``frames`` on the worker channel; the error code the master answered with."""
    try:
        with connect(ws_url(url), additional_headers=headers, max_size=None) as ws:
            for frame in frames:
                ws.send(frame)
            while True:
                reply = json.loads(ws.recv(timeout=10))
                if reply["type"] == "error":
                    with pytest.raises(ConnectionClosed):
                        ws.recv(timeout=10)
                    return str(reply["error"])
    except InvalidStatus as exc:
        return f"HTTP {exc.response.status_code}"
    except ConnectionClosed as exc:
        return f"closed {exc.rcvd.code if exc.rcvd else None}"


WS: list[tuple[str, list[str | bytes], dict[str, str], str | tuple[str, ...]]] = [
    ("worker: first frame not hello", ['{"type":"heartbeat"}'], WAUTH, "invalid"),
    ("worker: hello with an unknown field", [hello(group="wsg", extra=1)], WAUTH, "invalid"),
    ("worker: bad worker name", [hello("bad name", group="wsg")], WAUTH, "invalid"),
    ("worker: bad group", [hello(group="g/h")], WAUTH, "invalid"),
    ("worker: not JSON", ["hello?"], WAUTH, "invalid"),
    ("worker: binary garbage", [b"\x80\x04\x95\x00"], WAUTH, "invalid"),
    (
        "worker: unknown message type",
        [hello(group="wsg"), '{"type":"exec","code":"x"}'],
        WAUTH,
        "invalid",
    ),
    (
        "worker: hello twice",
        [hello("w-2", group="wsg"), hello("w-2", group="wsg")],
        WAUTH,
        "invalid",
    ),
    (
        "worker: frame over the limit",
        [hello("w-3", group="wsg"), "[" + "1," * LIMITS.max_frame_bytes + "1]"],
        WAUTH,
        # 1009 (message too big); the master refuses the frame from its header and closes
        # while the rest is still being sent, so the close can also arrive as a reset
        ("closed 1009", "closed None"),
    ),
    ("worker: client token", [hello(group="wsg")], AUTH, "HTTP 401"),
    ("worker: no token", [hello(group="wsg")], {}, "HTTP 401"),
]


@pytest.fixture(scope="module")
def master() -> Iterator[ThreadMaster]:
    with ThreadMaster(token=CLIENT_TOKEN, worker_token=WORKER_TOKEN, api_limits=LIMITS) as m:
        with httpx.Client(base_url=m.url, headers=AUTH) as http:
            http.post("/v1/tasks", json=_task(id="existing"))
        yield m


def _request(
    url: str, method: str, path: str, body: Any, headers: dict[str, str]
) -> httpx.Response:
    content = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    return httpx.request(method, url + path, content=content, headers=headers, timeout=20)


def test_at_least_30_distinct_bad_input_classes_are_rejected(master: ThreadMaster) -> None:
    checks: dict[str, Callable[[], None]] = {}
    for name, method, path, body, headers, status, code in HTTP:

        def check(
            method=method, path=path, body=body, headers=headers, status=status, code=code
        ) -> None:  # type: ignore[no-untyped-def]
            response = _request(master.url, method, path, body, headers)
            assert response.status_code == status, (response.status_code, response.text)
            answer = response.json()
            assert answer["error"] == code and answer["detail"], answer

        checks[name] = check
    for name, frames, headers, expected in WS:

        def ws_check(frames=frames, headers=headers, expected=expected) -> None:  # type: ignore[no-untyped-def]
            outcome = _ws_error(master.url, headers, frames)
            assert outcome in expected if isinstance(expected, tuple) else outcome == expected

        checks[name] = ws_check
    assert len(checks) >= 30, len(checks)
    failures = []
    for name, run in checks.items():
        before = counts(master.url, CLIENT_TOKEN)
        try:
            run()
            after = counts(master.url, CLIENT_TOKEN)
            # a worker that checked in before its bad frame is gone again: compare tasks
            assert (after["counts"], after["topic"]) == (before["counts"], before["topic"])
        except AssertionError as exc:
            failures.append(f"{name}: {exc}")
    assert failures == [], "\n".join(failures)
    print(f"{len(checks)} bad-input classes rejected without a state change")
