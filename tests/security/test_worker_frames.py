"""How a real master frames its messages to a worker: one message per frame for a
version-1 hello, the assign of the next attempt and the ack of the last one in one
array frame for a worker of protocol version 2."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from .conftest import ThreadMaster, hello, ws_url


def _finish(ws: ClientConnection, message: dict[str, Any]) -> None:
    ws.send(
        json.dumps(
            {"type": "finished", "group": message["group"], "id": message["id"],
             "attempt": message["attempt"], "ok": True, "result": message["id"]}
        )
    )  # fmt: skip


def _run_two(master: ThreadMaster, group: str, version: int | None) -> list[Any]:
    """Check in, take t1, finish it while t2 waits: the frames that follow."""
    fields = {} if version is None else {"version": version}
    with connect(ws_url(master.url)) as ws:
        ws.send(hello(f"{group}-w", group=group, **fields))
        assert json.loads(ws.recv(timeout=10))["type"] == "welcome"
        for id in ("t1", "t2"):
            response = httpx.post(master.url + "/v1/tasks", json={"id": id, "group": group})
            assert response.status_code == 202
        first = json.loads(ws.recv(timeout=10))
        assert first["type"] == "assign" and first["id"] == "t1"
        _finish(ws, first)
        frames = [json.loads(ws.recv(timeout=10))]
        if isinstance(frames[0], dict):  # single frames: the second message follows
            frames.append(json.loads(ws.recv(timeout=10)))
        messages = [m for f in frames for m in (f if isinstance(f, list) else [f])]
        _finish(ws, next(m for m in messages if m["type"] == "assign"))
        done = httpx.get(f"{master.url}/v1/tasks/{group}/t2", params={"wait": 10}, timeout=20)
        assert done.json()["status"] == "completed"
    return frames


def _kinds(frame: Any) -> Any:
    return [m["type"] for m in frame] if isinstance(frame, list) else frame["type"]


def test_a_version_2_worker_gets_ack_and_assign_in_one_frame(master: ThreadMaster) -> None:
    frames = _run_two(master, "v2", version=2)
    # work first, then the ack that holds nobody up
    assert [_kinds(f) for f in frames] == [["assign", "ack"]]
    assign, ack = frames[0]
    assert (assign["id"], ack["id"]) == ("t2", "t1")


def test_a_worker_that_names_no_version_gets_one_message_per_frame(master: ThreadMaster) -> None:
    frames = _run_two(master, "v1", version=None)
    assert [_kinds(f) for f in frames] == ["assign", "ack"]


def test_a_worker_may_frame_its_messages_any_way_websocket_allows(master: ThreadMaster) -> None:
    """Fragmented, with a 16-bit length, binary: the master reads each, whether its
    short cut for a lone text frame or websockets' parser takes it."""
    with connect(ws_url(master.url)) as ws:
        text = hello("frames-w", group="frames")
        ws.send(iter([text[:10], text[10:]]))  # a fragmented message
        assert json.loads(ws.recv(timeout=10))["type"] == "welcome"
        ws.send('{"type": "heartbeat"}' + " " * 300)  # a 16-bit length
        response = httpx.post(master.url + "/v1/tasks", json={"id": "f1", "group": "frames"})
        assert response.status_code == 202
        assign = json.loads(ws.recv(timeout=10))
        assert assign["type"] == "assign" and assign["id"] == "f1"
        finished = {"type": "finished", "group": "frames", "id": "f1",
                    "attempt": assign["attempt"], "ok": True, "result": "framed"}  # fmt: skip
        ws.send(json.dumps(finished).encode())  # binary
        done = httpx.get(f"{master.url}/v1/tasks/frames/f1", params={"wait": 10}, timeout=20)
    assert done.json()["status"] == "completed" and done.json()["result"] == "framed"


def test_a_bye_ends_the_session_and_a_second_hello_is_refused(master: ThreadMaster) -> None:
    """Each sent alone after check-in, as a worker sends them: the master still ends
    the session on a bye, and answers a second hello with an error and a close."""
    with connect(ws_url(master.url)) as ws:
        ws.send(hello("bye-w", group="bye", version=2))
        assert json.loads(ws.recv(timeout=10))["type"] == "welcome"
        httpx.get(master.url + "/v1/state", timeout=10)  # the session reads on by now
        ws.send('{"type":"bye"}')
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
    with connect(ws_url(master.url)) as ws:
        ws.send(hello("twice-w", group="bye", version=2))
        assert json.loads(ws.recv(timeout=10))["type"] == "welcome"
        httpx.get(master.url + "/v1/state", timeout=10)
        ws.send(hello("twice-w", group="bye", version=2))
        error = json.loads(ws.recv(timeout=10))
        assert (error["type"], error["error"]) == ("error", "invalid")
        assert "hello sent twice" in error["detail"]
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
        assert ws.close_code == 1008
