"""The IO-free half of the clients: URL lists, error mapping, parsing, the failover choice."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

import mawex
import mawex.client
from mawex.client._base import (
    Attempt,
    Failover,
    decode_body,
    error_from_response,
    parse_event,
    parse_masters,
    parse_task_result,
    task_body,
)
from mawex.errors import (
    ConfigError,
    MawexError,
    NotFound,
    NotLeader,
    QueueFull,
    Rejected,
    TooLarge,
    Unauthorized,
    Unavailable,
)
from mawex.model import TaskStatus


@pytest.mark.parametrize(
    ("masters", "urls"),
    [
        ("http://a:1", ["http://a:1"]),
        ("http://a:1,http://b:2", ["http://a:1", "http://b:2"]),
        (" http://a:1/ , https://b:2// ,", ["http://a:1", "https://b:2"]),
        (["http://a:1,http://b:2", "http://c:3"], ["http://a:1", "http://b:2", "http://c:3"]),
        ("a:1,http://a:1", ["http://a:1"]),
        ("http://proxy/mawex/", ["http://proxy/mawex"]),
        (
            "unix:/run/m.sock,http+unix://%2Frun%2Fm.sock,unix:/run/n.sock",
            ["http+unix://%2Frun%2Fm.sock", "http+unix://%2Frun%2Fn.sock"],
        ),
    ],
)
def test_parse_masters(masters: Any, urls: list[str]) -> None:
    assert parse_masters(masters) == urls


@pytest.mark.parametrize(
    "masters", ["", " , ", [], "ftp://a:1", "http://", "unix:", "http+unix://%2Fm.sock/v1"]
)
def test_parse_masters_rejects(masters: Any) -> None:
    with pytest.raises(ConfigError):
        parse_masters(masters)


@pytest.mark.parametrize("cls", [mawex.Client, mawex.AsyncClient])
@pytest.mark.parametrize("window", [-0.001, 1.5, float("nan")])
def test_a_client_refuses_a_bad_busy_poll_window(cls: Any, window: float) -> None:
    with pytest.raises(ConfigError, match="busy-poll window"):
        cls("http://a:1", busy_poll=window)


def test_busy_poll_needs_the_clients_own_connections() -> None:
    with pytest.raises(ConfigError, match="busy_poll"):
        mawex.Client("http://a:1", busy_poll=0.001, transport=httpx.MockTransport(print))
    with pytest.raises(ConfigError, match="busy_poll"):
        mawex.AsyncClient("http://a:1", busy_poll=0.001, transport=httpx.MockTransport(print))
    mawex.Client("http://a:1", busy_poll=0, transport=httpx.MockTransport(print)).close()


def response(status: int, body: Any = None, text: str | None = None) -> httpx.Response:
    request = httpx.Request("GET", "http://a:1/v1/x")
    if text is not None:
        return httpx.Response(status, text=text, request=request)
    return httpx.Response(status, json=body, request=request)


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (400, "invalid", Rejected),
        (422, "invalid", Rejected),
        (401, "unauthorized", Unauthorized),
        (404, "not_found", NotFound),
        (413, "too_large", TooLarge),
        (429, "queue_full", QueueFull),
        (409, "conflict", Rejected),
        (400, "too_large", Rejected),
    ],
)
def test_error_bodies_map_to_errors(status: int, code: str, cls: type[Exception]) -> None:
    error = error_from_response(response(status, {"error": code, "detail": "the detail"}))
    assert type(error) is cls
    assert str(error) == "the detail"


def test_not_leader_carries_normalised_hint() -> None:
    body = {"error": "not_leader", "detail": "standby", "leader": "http://b:2/"}
    error = error_from_response(response(503, body))
    assert isinstance(error, NotLeader)
    assert error.leader == "http://b:2"
    unknown = error_from_response(response(503, {"error": "not_leader", "leader": None}))
    assert isinstance(unknown, NotLeader)
    assert unknown.leader is None


def test_other_errors() -> None:
    server = error_from_response(response(500, {"error": "internal", "detail": "boom"}))
    assert type(server) is MawexError
    assert "boom" in str(server)
    assert server.status == 500
    proxy = error_from_response(response(502, text="<html>Bad Gateway</html>"))
    assert type(proxy) is MawexError
    assert "Bad Gateway" in str(proxy)
    plain = error_from_response(response(404, text="nope"))
    assert type(plain) is NotFound
    assert str(plain) == "nope"


def test_parse_task_result() -> None:
    body = {"id": "t1", "group": "g", "status": "failed", "attempt": 3, "error": "E"}
    task = parse_task_result(body | {"errors": ["a", "b"], "extra": 1})
    assert task.status is TaskStatus.FAILED
    assert (task.attempt, task.error, task.errors, task.done) == (3, "E", ["a", "b"], True)
    with pytest.raises(MawexError, match="malformed"):
        parse_task_result({"id": "t1", "group": "g", "status": "weird", "attempt": 1})
    with pytest.raises(MawexError, match="malformed"):
        parse_task_result([1, 2])


def test_parse_event_ignores_unknown_fields() -> None:
    body = {"offset": 7, "type": "scheduled", "id": "t", "group": "g", "attempt": 1, "at": 2.5}
    event = parse_event(body | {"worker": "w1", "pod": "p1", "future": {"x": 1}})
    assert (event.offset, event.type, event.worker, event.pod, event.at) == (
        7,
        "scheduled",
        "w1",
        "p1",
        2.5,
    )
    with pytest.raises(MawexError):
        parse_event({"type": "completed"})


def test_task_body() -> None:
    body = task_body({"payload": [1], "max_attempts": 2}, "g", 0)
    assert body["group"] == "g"
    assert len(body["id"]) == 32
    assert body["max_attempts"] == 2
    assert "timeout_s" not in body
    assert task_body({"id": "x", "group": "h", "payload": None}, "g", 0)["group"] == "h"
    with pytest.raises(Rejected, match="unknown field"):
        task_body({"id": "x", "priority": 1}, "g", 3)
    with pytest.raises(Rejected, match="no group"):
        task_body({"id": "x"}, None, 3)
    with pytest.raises(Rejected, match="invalid id"):
        task_body({"id": "../x"}, "g", 3)


def attempt(urls: list[str], deadline: float = 100.0) -> Attempt:
    return Attempt(Failover(urls), deadline=deadline, started=0.0, rng=random.Random(1))


def test_attempt_rotates_then_backs_off() -> None:
    a = attempt(["a", "b", "c"])
    assert a.url == "a"
    assert a.fail("refused", 0.0) == 0
    assert a.url == "b"
    assert a.fail("refused", 0.0) == 0
    assert a.url == "c"
    first = a.fail("refused", 0.0)
    assert a.url == "a"
    assert 0.05 <= first <= 0.1
    delays = [a.fail("refused", 1.0) for _ in range(3 * 8)]
    rounds = [d for d in delays if d > 0]
    # Exponential, capped at 2 s, with up to half taken off by jitter.
    steps = [0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0, 2.0]
    assert len(rounds) == len(steps)
    for delay, step in zip(rounds, steps, strict=True):
        assert step / 2 <= delay <= step


def test_attempt_follows_hints_once_per_round() -> None:
    a = attempt(["a", "b"])
    a.fail("not leader", 0.0, hint="x")
    assert a.url == "x"  # not in the list: still used
    a.fail("not leader", 0.0, hint="a")  # already tried: go on to b
    assert a.url == "b"
    assert a.fail("not leader", 0.0, hint="x") > 0  # ping-pong: a round is over
    assert a.url == "x"  # new round starts at the latest hint


def test_attempt_raises_unavailable_at_deadline() -> None:
    a = attempt(["http://a", "http://b"], deadline=5.0)
    a.fail("ConnectError: refused", 1.0)
    assert 0 < a.fail("not leader, leader unknown", 4.9) <= 0.1
    assert a.fail("ConnectError: refused", 5.0) == 0  # the round is finished...
    with pytest.raises(Unavailable) as info:
        a.fail("not leader, leader unknown", 5.0)  # ...before giving up
    assert "http://a (ConnectError: refused)" in str(info.value)
    assert "http://b (not leader, leader unknown)" in str(info.value)


def test_failover_prefer() -> None:
    f = Failover(["a", "b", "c"])
    f.prefer("c")
    assert f.urls == ["c", "a", "b"]
    f.prefer("x")
    assert f.urls == ["x", "c", "a", "b"]
    assert list(f.after("c")) == ["a", "b", "x"]
    assert list(f.after("unknown")) == ["x", "c", "a", "b"]


def test_exports() -> None:
    assert mawex.client.__all__ == sorted(mawex.client.__all__)
    for name in mawex.client.__all__:
        assert getattr(mawex.client, name).__name__ == name


def test_client_imports_no_server_side() -> None:
    # Load mawex.client under a bare parent package, so that only its own imports count
    # (not whatever mawex/__init__.py re-exports).
    package = Path(mawex.client.__file__).parents[1]
    code = (
        "import sys, types; "
        "pkg = types.ModuleType('mawex'); "
        f"pkg.__path__ = [{str(package)!r}]; "
        "sys.modules['mawex'] = pkg; "
        "import mawex.client; "
        "bad = [m for m in sys.modules if m.split('.')[:2] in "
        "(['mawex', 'server'], ['mawex', 'master'], ['mawex', 'journal'])]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b'{"id":"t1","result":[1,2.5,null,true,"\\u00e9"]}', None),
        (b"[123456789012345678901234567890, -0.0]", None),
        (b'{"a": 1, "a": 2}', None),
        (b"[NaN]", None),  # not JSON, but the standard library takes it
        (b"[1e400]", None),
        ('{"x": "é"}'.encode("utf-16"), {"x": "é"}),
    ],
)
def test_decode_body_reads_what_json_loads_reads(content: bytes, expected: object) -> None:
    response = httpx.Response(200, content=content, request=httpx.Request("GET", "http://m/"))
    decoded = decode_body(response)
    want = json.loads(content) if expected is None else expected
    assert repr(decoded) == repr(want)  # (repr: NaN is not equal to itself)


def test_decode_body_refuses_what_is_not_json() -> None:
    response = httpx.Response(200, content=b"<html>", request=httpx.Request("GET", "http://m/x"))
    with pytest.raises(MawexError, match="malformed response from http://m/x"):
        decode_body(response)
