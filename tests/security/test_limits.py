"""Limits: body and head sizes and deadlines (no slowloris), connections, batches, the
pending queue, worker-channel frames, results, errors, the hello deadline and the rate."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from mawex.core.decide import Limits
from mawex.server.limits import NetLimits, TokenBucket
from mawex.wire.api import MAX_ERROR_CHARS, ApiLimits

from .conftest import (
    ThreadMaster,
    ThreadWorker,
    counts,
    hello,
    is_closed,
    raw_socket,
    read_response,
    wait_until,
    ws_url,
)

SMALL = ApiLimits(
    max_payload_bytes=1000, max_result_bytes=1000, max_batch_tasks=3, max_batch_bytes=100_000
)
QUICK = NetLimits(header_timeout=1.0, body_timeout=1.0, hello_timeout=0.5, max_header_bytes=8192)


@pytest.fixture(scope="module")
def small() -> ThreadMaster:
    limits = Limits(heartbeat_s=0.2, worker_timeout_s=2.0, worker_grace_s=0.3,
                    max_pending_per_group=2)  # fmt: skip
    with ThreadMaster(api_limits=SMALL, net_limits=QUICK, limits=limits) as running:
        yield running


def _post_head(path: str, length: int, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n{extra}\r\n"
    ).encode()


# -- HTTP: sizes and deadlines ----------------------------------------------------------


def test_declared_oversized_body_is_refused_before_it_is_sent(small: ThreadMaster) -> None:
    with raw_socket(small.url) as sock:
        sock.sendall(_post_head("/v1/tasks/batch", 10**9))
        status, body, _ = read_response(sock)
    assert status == 413 and json.loads(body)["error"] == "too_large"


def test_streamed_oversized_body_is_cut_off(small: ThreadMaster) -> None:
    def chunks():  # type: ignore[no-untyped-def]
        for _ in range(200):
            yield b" " * 65536  # chunked: no Content-Length to check up front

    before = counts(small.url)
    response = httpx.post(small.url + "/v1/tasks/batch", content=chunks(), timeout=10)
    assert response.status_code == 413
    assert counts(small.url) == before


def test_body_must_arrive_within_the_body_timeout(small: ThreadMaster) -> None:
    with raw_socket(small.url) as sock:
        sock.sendall(_post_head("/v1/tasks", 100) + b'{"id": "a",')
        started = time.monotonic()
        status, body, _ = read_response(sock, timeout=10)
    assert status == 408 and json.loads(body)["error"] == "request_timeout"
    assert time.monotonic() - started < 5


def test_trickled_body_must_arrive_whole_within_the_body_timeout(small: ThreadMaster) -> None:
    """The body's deadline is for all of it: each byte in time does not extend it."""
    with raw_socket(small.url) as sock:
        sock.sendall(_post_head("/v1/tasks", 100))
        started = time.monotonic()
        answer = b""
        sock.settimeout(0.2)
        while time.monotonic() - started < 8 and not answer:
            try:
                sock.sendall(b" ")
                answer = sock.recv(65536) or b"(closed)"
            except TimeoutError:
                continue
            except OSError:
                answer = b"(reset)"
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"request body not received within 1 s" in answer
    assert time.monotonic() - started < 5


def test_websocket_outlives_the_request_deadlines(small: ThreadMaster) -> None:
    """A WebSocket handshake is a request whose connection then stays open: no request
    deadline may fire on it."""
    with connect(ws_url(small.url, "/v1/results/stream?from=0")) as ws:
        with pytest.raises(TimeoutError):
            ws.recv(timeout=QUICK.header_timeout + QUICK.body_timeout)
        task = {"id": "outlives-1", "group": "outlives", "payload": None}
        assert httpx.post(small.url + "/v1/tasks", json=task).status_code == 202
        assert httpx.delete(small.url + "/v1/tasks/outlives/outlives-1").status_code == 200
        while True:
            event = json.loads(ws.recv(timeout=10))
            if event.get("id") == "outlives-1":
                break
    assert event["type"] == "cancelled"


def test_idle_connection_is_closed_after_the_header_timeout(small: ThreadMaster) -> None:
    with raw_socket(small.url) as sock:
        assert is_closed(sock, timeout=6), "a silent connection stayed open"


def test_slowloris_head_is_cut_off(small: ThreadMaster) -> None:
    with raw_socket(small.url) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        answer = b""
        while time.monotonic() - started < 8 and not answer:
            try:
                sock.sendall(b"X-Drip: 1\r\n")  # a header line every 0.2 s, never the end
                sock.settimeout(0.2)
                answer = sock.recv(65536) or b"(closed)"
            except TimeoutError:
                continue
            except OSError:
                answer = b"(reset)"
    assert answer.startswith((b"HTTP/1.1 408", b"(closed)", b"(reset)")), answer
    assert time.monotonic() - started < 5


def test_slowloris_after_a_keep_alive_response_is_cut_off(small: ThreadMaster) -> None:
    with raw_socket(small.url) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, _ = read_response(sock)
        assert status == 200
        started = time.monotonic()
        for byte in b"GET /healthz HTTP/1.1\r\n":
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(0.2)
            if time.monotonic() - started > 4:
                break
        assert is_closed(sock, timeout=3)
    assert time.monotonic() - started < 6


def test_oversized_head_gets_431(small: ThreadMaster) -> None:
    with raw_socket(small.url) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n")
        status, body, _ = read_response(sock)
    assert status == 431 and json.loads(body)["error"] == "too_large"
    assert httpx.get(small.url + "/healthz").status_code == 200


# -- connections ------------------------------------------------------------------------


def test_max_connections() -> None:
    net = NetLimits(max_connections=4, header_timeout=30)
    with ThreadMaster(net_limits=net) as running:
        idle = [raw_socket(running.url) for _ in range(4)]
        try:
            time.sleep(0.2)
            response = httpx.get(running.url + "/healthz", timeout=10)
            assert response.status_code == 503
        finally:
            for sock in idle:
                sock.close()
        wait_until(
            lambda: httpx.get(running.url + "/healthz", timeout=10).status_code == 200,
            what="serving again once the connections closed",
        )
        with contextlib.ExitStack() as stack:
            for _ in range(4):
                stack.enter_context(connect(ws_url(running.url, "/v1/results/stream")))
            with pytest.raises(InvalidStatus) as refused:
                stack.enter_context(connect(ws_url(running.url, "/v1/results/stream")))
            assert refused.value.response.status_code == 503
            assert json.loads(refused.value.response.body)["error"] == "overloaded"


# -- the API's own limits ----------------------------------------------------------------


def test_batch_limit(small: ThreadMaster) -> None:
    before = counts(small.url)
    tasks = [{"id": f"b{i}", "group": "batch"} for i in range(4)]
    response = httpx.post(small.url + "/v1/tasks/batch", json={"tasks": tasks})
    assert response.status_code == 413
    assert "over the limit of 3" in response.json()["detail"]
    assert counts(small.url) == before


def test_pending_queue_is_bounded_per_group(small: ThreadMaster) -> None:
    url = small.url + "/v1/tasks"
    for i in range(2):
        assert httpx.post(url, json={"id": f"q{i}", "group": "full"}).status_code == 202
    before = counts(small.url)
    response = httpx.post(url, json={"id": "q2", "group": "full"})
    assert response.status_code == 429
    assert response.json()["error"] == "queue_full"
    batch = {"tasks": [{"id": "q3", "group": "full"}]}
    assert httpx.post(small.url + "/v1/tasks/batch", json=batch).status_code == 429
    assert counts(small.url) == before
    # other groups are not affected
    assert httpx.post(url, json={"id": "q0", "group": "other"}).status_code == 202


# -- the worker channel -------------------------------------------------------------------


def test_hello_deadline(small: ThreadMaster) -> None:
    with connect(ws_url(small.url)) as ws:
        frame = json.loads(ws.recv(timeout=10))
        assert frame["type"] == "error" and "no hello within 0.5 s" in frame["detail"]
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)


def test_oversized_frame_closes_the_session_and_nothing_else(small: ThreadMaster) -> None:
    with connect(ws_url(small.url), max_size=None) as ws:
        ws.send(hello("big-1", group="big"))
        assert json.loads(ws.recv(timeout=10))["type"] == "welcome"
        before = counts(small.url)
        ws.send("[" + "1," * SMALL.max_frame_bytes + "1]")
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code in (1008, 1009)
    assert httpx.get(small.url + "/healthz").status_code == 200
    after = counts(small.url)
    assert after["counts"] == before["counts"] and after["groups"] == before["groups"]


def _assigned(ws, group: str, id: str) -> dict:  # type: ignore[no-untyped-def,type-arg]
    while True:
        frame = json.loads(ws.recv(timeout=10))
        if frame["type"] == "assign" and frame["id"] == id:
            assert frame["group"] == group
            return frame  # type: ignore[no-any-return]


def _task(url: str, group: str, id: str) -> dict:  # type: ignore[type-arg]
    return httpx.get(f"{url}/v1/tasks/{group}/{id}", params={"wait": 10}, timeout=20).json()  # type: ignore[no-any-return]


def test_result_over_the_masters_limit_fails_the_attempt(small: ThreadMaster) -> None:
    with connect(ws_url(small.url)) as ws:
        ws.send(hello("res-1", group="res"))
        httpx.post(small.url + "/v1/tasks", json={"id": "r1", "group": "res"})
        frame = _assigned(ws, "res", "r1")
        finished = {"type": "finished", "group": "res", "id": "r1",
                    "attempt": frame["attempt"], "ok": True, "result": "x" * 5000}  # fmt: skip
        ws.send(json.dumps(finished))
        task = _task(small.url, "res", "r1")
    assert task["status"] == "failed"
    assert "over the master's limit of 1000 bytes" in task["error"]
    assert "result" not in task or task["result"] is None


def test_long_error_text_is_cut(small: ThreadMaster) -> None:
    with connect(ws_url(small.url)) as ws:
        ws.send(hello("err-1", group="err"))
        httpx.post(small.url + "/v1/tasks", json={"id": "e1", "group": "err"})
        frame = _assigned(ws, "err", "e1")
        finished = {"type": "finished", "group": "err", "id": "e1", "attempt": frame["attempt"],
                    "ok": False, "error": "E" * 100_000}  # fmt: skip
        ws.send(json.dumps(finished))
        task = _task(small.url, "err", "e1")
    assert task["status"] == "failed"
    assert len(task["error"]) <= MAX_ERROR_CHARS and "characters, cut" in task["error"]


def test_real_worker_learns_the_masters_result_limit(small: ThreadMaster) -> None:
    with ThreadWorker(small, "tests.security.executors:huge_result", group="hr", pod="phr") as w:
        w.wait_connected()
        httpx.post(small.url + "/v1/tasks", json={"id": "h1", "group": "hr", "payload": 5000})
        task = _task(small.url, "hr", "h1")
        assert task["status"] == "failed"
        assert "over the limit of 1000 bytes" in task["error"]
        httpx.post(small.url + "/v1/tasks", json={"id": "h2", "group": "hr", "payload": 10})
        assert _task(small.url, "hr", "h2")["status"] == "completed"


# -- rate ---------------------------------------------------------------------------------


def test_token_bucket() -> None:
    bucket = TokenBucket(rate=10, burst=5, now=0.0)
    assert [bucket.take(0.0) for _ in range(5)] == [0.0] * 5
    assert bucket.take(0.0) == pytest.approx(0.1)
    assert bucket.take(10.0) == 0.0  # refilled, up to the burst only
    assert sum(bucket.take(10.0) == 0.0 for _ in range(10)) == 4


def test_flooding_worker_is_slowed_and_others_are_served() -> None:
    rate = 100.0
    net = NetLimits(worker_rate=rate, worker_burst=rate)
    with ThreadMaster(net_limits=net) as running:
        sent = 0
        stop = threading.Event()
        # a finished frame for an attempt it does not have, carrying a long error text
        junk = json.dumps({"type": "finished", "group": "flood", "id": "nope", "attempt": 1,
                           "ok": False, "error": "F" * 16000})  # fmt: skip

        def flood() -> None:
            nonlocal sent
            with connect(ws_url(running.url), close_timeout=1, compression=None) as ws:
                ws.send(hello("flooder", group="flood", pod="pf"))
                ws.recv(timeout=10)
                while not stop.is_set():
                    try:
                        ws.send(junk)
                    except (ConnectionClosed, OSError):
                        return
                    sent += 1

        flooder = threading.Thread(target=flood, daemon=True)
        with ThreadWorker(running, "tests.security.executors:echo", group="good", pod="pg") as w:
            w.wait_connected()
            flooder.start()
            time.sleep(0.5)
            started = time.monotonic()
            worst = 0.0
            for i in range(20):
                t0 = time.monotonic()
                assert httpx.get(running.url + "/v1/state", timeout=10).status_code == 200
                httpx.post(running.url + "/v1/tasks", json={"id": f"g{i}", "group": "good"})
                assert _task(running.url, "good", f"g{i}")["status"] == "completed"
                worst = max(worst, time.monotonic() - t0)
            elapsed = time.monotonic() - started
            stop.set()
            flooder.join(15)
        flooded_for = elapsed + 0.5
        # what the master read: at most rate * time + burst; what the sender got out also
        # sits in socket buffers (a few MB), so allow for that, far below an unthrottled run
        assert sent < rate * flooded_for + rate + 1500, (sent, flooded_for)
        assert worst < 3.0, f"a round trip took {worst:.2f}s during the flood"


def test_frames_arriving_one_at_a_time_wait_for_their_tokens_too() -> None:
    """Frames each in a read of their own (read straight from the connection, not
    through the app's queue) are held to the rate as well: the master reads the last
    no sooner than the rate allows."""
    rate, burst, heartbeats = 50.0, 5.0, 30
    net = NetLimits(worker_rate=rate, worker_burst=burst)
    with ThreadMaster(net_limits=net) as running:
        with connect(ws_url(running.url), compression=None, close_timeout=1) as ws:
            ws.send(hello("paced", group="paced", pod="pp"))
            ws.recv(timeout=10)  # the welcome
            httpx.post(running.url + "/v1/tasks", json={"id": "t", "group": "paced"}, timeout=10)
            assign = json.loads(ws.recv(timeout=10))
            assert assign["type"] == "assign"
            started = time.monotonic()
            for _ in range(heartbeats):
                ws.send('{"type":"heartbeat"}')
                time.sleep(0.002)  # a read each
            finished = {"type": "finished", "group": "paced", "id": "t",
                        "attempt": assign["attempt"], "ok": True, "result": 1}  # fmt: skip
            ws.send(json.dumps(finished))
            task = httpx.get(running.url + "/v1/tasks/paced/t?wait=30", timeout=40).json()
            elapsed = time.monotonic() - started
    assert task["status"] == "completed"
    # 31 frames with 5 tokens saved up (a few more refilled before the first): at 50 a
    # second, the last is read 0.45 s or more after the first; unthrottled, in ~0.07 s
    assert elapsed >= 0.4, elapsed


def test_unthrottled_rate_is_much_higher_for_comparison() -> None:
    """The bound above means something: without a rate the same sender gets far more out."""
    net = NetLimits(worker_rate=0)
    with ThreadMaster(net_limits=net) as running:
        junk = json.dumps({"type": "finished", "group": "flood", "id": "nope", "attempt": 1,
                           "ok": False, "error": "F" * 16000})  # fmt: skip
        sent = 0
        with connect(ws_url(running.url), compression=None, close_timeout=0.5) as ws:
            ws.send(hello("flooder", group="flood", pod="pf"))
            ws.recv(timeout=10)
            deadline = time.monotonic() + 0.5
            while time.monotonic() < deadline:
                ws.send(junk)
                sent += 1
        assert sent > 500, sent


def test_raw_socket_helper_sanity(small: ThreadMaster) -> None:
    with raw_socket(small.url) as sock:
        assert isinstance(sock, socket.socket)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock)[0] == 200
