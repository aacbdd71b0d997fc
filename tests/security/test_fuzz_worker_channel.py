"""Hypothesis fuzzing of the worker channel from a fake worker over a real WebSocket.

Each example is a session of random steps: valid frames (hello, heartbeat, finished
and free for the attempt it was assigned or for made-up ones, bye), random JSON,
random text and bytes, truncated, duplicated and oversized frames, abrupt closes.
The master must answer or close cleanly (never an internal error), keep serving,
and keep its state consistent: every task still known, at most one terminal
result each, topic offsets contiguous. Afterwards a real worker drains the queue:
every task ends with exactly one terminal result.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from mawex.core.decide import Limits
from mawex.wire.api import ApiLimits

from .conftest import ThreadMaster, ThreadWorker, wait_until, ws_url

pytestmark = pytest.mark.timeout(180)

TASKS = [f"t{i}" for i in range(6)]
GROUP = "fz"
LIMITS = ApiLimits(max_payload_bytes=2000, max_result_bytes=2000)
#: Close codes a master may end a session with: normal, going away, policy (an
#: ``error`` frame says why), message too big, try again later (not the leader).
CLEAN_CLOSES = {1000, 1001, 1008, 1009, 1013}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
names = st.sampled_from(["fw-1", "fw-2", "bad name", "", "x" * 70, GROUP, "other"])
frame_types = st.sampled_from(["hello", "heartbeat", "finished", "free", "bye", "welcome", "x"])

step = st.one_of(
    st.tuples(st.just("hello"), st.sampled_from(["fw-1", "fw-2"]), st.sampled_from([GROUP, "g2"])),
    st.tuples(st.just("hello_odd"), names, names, names),
    st.just(("heartbeat",)),
    st.tuples(st.just("finish"), st.booleans(), json_values),
    st.tuples(
        st.just("finish_other"),
        st.sampled_from([*TASKS, "nope"]),
        st.integers(-2, 5),
        st.booleans(),
    ),
    st.just(("free",)),
    st.tuples(st.just("bye"), st.booleans()),
    st.tuples(st.just("json"), json_values),
    st.tuples(st.just("typed"), frame_types, st.dictionaries(st.text(max_size=10), json_values)),
    st.tuples(st.just("text"), st.text(max_size=60)),
    st.tuples(st.just("bytes"), st.binary(max_size=60)),
    st.tuples(st.just("truncated"), st.integers(1, 40)),
    st.just(("duplicate",)),
    st.just(("oversized",)),
    st.just(("close",)),
)


class FakeWorker:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.assigned: dict[str, Any] | None = None
        self.last: str | bytes = '{"type":"heartbeat"}'
        self.closed_by_master: int | None = None
        self.frames: list[dict[str, Any]] = []

    def send(self, frame: str | bytes) -> bool:
        self.last = frame
        try:
            self.ws.send(frame)
        except (ConnectionClosed, OSError):
            return self._closed()
        return self.drain(0.01)

    def drain(self, timeout: float) -> bool:
        while True:
            try:
                data = self.ws.recv(timeout=timeout)
            except TimeoutError:
                return True
            except (ConnectionClosed, OSError):
                return self._closed()
            frame = json.loads(data)
            self.frames.append(frame)
            if frame["type"] == "assign":
                self.assigned = frame
            timeout = 0.001

    def _closed(self) -> bool:
        rcvd = getattr(self.ws.protocol.close_rcvd, "code", None)
        self.closed_by_master = rcvd if rcvd is not None else -1
        return False

    def play(self, action: tuple[Any, ...]) -> bool:
        kind = action[0]
        ref = self.assigned or {"group": GROUP, "id": "nope", "attempt": 1}
        if kind == "hello":
            return self.send(_dumps({"type": "hello", "worker": action[1], "group": action[2],
                                     "pod": "fuzz-pod"}))  # fmt: skip
        if kind == "hello_odd":
            return self.send(_dumps({"type": "hello", "worker": action[1], "group": action[2],
                                     "pod": action[3]}))  # fmt: skip
        if kind == "heartbeat":
            return self.send('{"type":"heartbeat"}')
        if kind == "finish":
            body = {"type": "finished", "group": ref["group"], "id": ref["id"],
                    "attempt": ref["attempt"], "ok": action[1]}  # fmt: skip
            body.update({"result": action[2]} if action[1] else {"error": str(action[2])[:200]})
            return self.send(_dumps(body))
        if kind == "finish_other":
            return self.send(_dumps({"type": "finished", "group": GROUP, "id": action[1],
                                     "attempt": action[2], "ok": action[3]}))  # fmt: skip
        if kind == "free":
            return self.send(_dumps({"type": "free", "group": ref["group"], "id": ref["id"],
                                     "attempt": ref["attempt"]}))  # fmt: skip
        if kind == "bye":
            handback = {k: ref[k] for k in ("group", "id", "attempt")} if action[1] else None
            return self.send(_dumps({"type": "bye", "handback": handback}))
        if kind == "json":
            return self.send(_dumps(action[1]))
        if kind == "typed":
            return self.send(_dumps({**action[2], "type": action[1]}))
        if kind in ("text", "bytes"):
            return self.send(action[1])
        if kind == "truncated":
            whole = _dumps({"type": "finished", **ref, "ok": True, "result": [1, 2, 3]})
            return self.send(whole[: max(1, len(whole) - action[1])])
        if kind == "duplicate":
            return self.send(self.last)
        if kind == "oversized":
            return self.send('{"type":"heartbeat","pad":"' + "p" * LIMITS.max_frame_bytes + '"}')
        self.ws.socket.close()  # "close": abruptly, no close frame
        return False


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _check_consistent(url: str) -> None:
    """Every task still known, at most one terminal result each, topic contiguous."""
    assert httpx.get(url + "/healthz", timeout=10).status_code == 200
    state = httpx.get(url + "/v1/state", timeout=10).json()
    assert state["leader"] is True
    counts = state["counts"]
    assert counts["accepted"] == len(TASKS)
    events = httpx.get(url + "/v1/results", params={"from": 0, "limit": 10000}).json()["events"]
    assert [e["offset"] for e in events] == list(range(1, len(events) + 1))
    terminal: dict[str, int] = {}
    for event in events:
        if event["type"] in ("completed", "failed", "cancelled", "expired"):
            terminal[event["id"]] = terminal.get(event["id"], 0) + 1
    assert all(n == 1 for n in terminal.values()), terminal
    for id in TASKS:
        task = httpx.get(f"{url}/v1/tasks/{GROUP}/{id}", timeout=10).json()
        assert task["status"] in ("pending", "running", "completed", "failed"), task
        assert (task["status"] in ("completed", "failed")) == (id in terminal), (task, terminal)
    running = sum(g["running"] for g in state["groups"].values())
    busy_pods = sum(p["busy"] for p in state["pods"].values())
    assert running <= busy_pods + 1  # a pod runs one task at a time (one may be finishing)


def test_fuzz_worker_channel() -> None:
    limits = Limits(heartbeat_s=0.2, worker_timeout_s=1.0, worker_grace_s=0.2)
    with ThreadMaster(limits=limits, api_limits=LIMITS) as master:
        for id in TASKS:
            body = {"id": id, "group": GROUP, "payload": {"id": id}, "max_attempts": 100}
            assert httpx.post(master.url + "/v1/tasks", json=body).status_code == 202

        @settings(
            max_examples=30,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(steps=st.lists(step, min_size=1, max_size=10))
        def session(steps: list[tuple[Any, ...]]) -> None:
            with connect(
                ws_url(master.url), max_size=None, compression=None, close_timeout=2
            ) as ws:
                fake = FakeWorker(ws)
                for action in steps:
                    if not fake.play(action):
                        break
                else:
                    fake.drain(0.05)
            if fake.closed_by_master is not None and fake.closed_by_master != -1:
                assert fake.closed_by_master in CLEAN_CLOSES, (fake.closed_by_master, steps)
            errors = [f for f in fake.frames if f["type"] == "error"]
            assert all(f["error"] in ("invalid", "too_large", "not_leader") for f in errors)
            _check_consistent(master.url)

        session()

        # the master still serves a real worker: every task ends, exactly once
        with ThreadWorker(master, "tests.security.executors:echo", group=GROUP, pod="real"):

            def all_done() -> bool:
                for id in TASKS:
                    task = httpx.get(f"{master.url}/v1/tasks/{GROUP}/{id}").json()
                    if task["status"] not in ("completed", "failed"):
                        return False
                return True

            wait_until(all_done, timeout=60, what="the real worker to finish every task")
        _check_consistent(master.url)
