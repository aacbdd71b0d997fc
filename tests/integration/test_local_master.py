"""The whole stack in one process: LocalMaster, real workers over loopback, both clients."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

import mawex
from mawex.journal.memory import MemoryJournal
from mawex.local import LocalMaster
from mawex.worker.runner import WorkerPool, build_workers


@pytest.fixture
async def master(tmp_path: Path) -> AsyncIterator[LocalMaster]:
    async with LocalMaster(f"sqlite:///{tmp_path / 'm.db'}?synchronous=normal") as local:
        yield local


async def _workers(master: LocalMaster, executor: str, groups: str, pod: str) -> WorkerPool:
    pool = build_workers(executor, masters=[master.url], groups=groups, pod=pod)
    asyncio.get_running_loop().create_task(pool.run())
    await asyncio.wait_for(pool.wait_connected(), 10)
    return pool


async def test_async_client_round_trip(master: LocalMaster) -> None:
    pool = await _workers(master, "mawex.examples.demo:echo", "g1,g2", "pod-a")
    try:
        async with master.client() as client:
            receipt = await client.submit("g1", {"x": 1}, id="one")
            assert receipt == mawex.SubmitReceipt(id="one", group="g1", duplicate=False)
            assert await client.result("g1", "one", timeout=10) == {"x": 1}
            batch = await client.submit_many(
                [{"id": f"b{i}", "group": "g2", "payload": i} for i in range(50)]
            )
            assert (batch.accepted, batch.duplicates) == (50, 0)
            for i in range(50):
                assert await client.result("g2", f"b{i}", timeout=10) == i
            again = await client.submit("g1", {"x": 2}, id="one")
            assert again.duplicate
            assert (await client.get("g1", "one")).result == {"x": 1}
            events = [e async for e in client.results(from_offset=0, follow=False)]
            assert [e.offset for e in events] == list(range(1, len(events) + 1))
            done = [e for e in events if e.type == "completed"]
            assert len(done) == 51
    finally:
        pool.stop()


async def test_sync_client_in_a_thread_sees_failures(master: LocalMaster) -> None:
    pool = await _workers(master, "mawex.examples.demo:fail", "bad", "pod-b")

    def use_sync_client() -> str | None:
        with mawex.Client(master.url) as client:
            client.submit("bad", {"error": "nope"}, id="f1", max_attempts=2)
            try:
                client.result("bad", "f1", timeout=10)
            except mawex.TaskFailed as exc:
                assert client.get("bad", "f1").errors and len(client.get("bad", "f1").errors) == 2
                return exc.error
        return None

    try:
        error = await asyncio.to_thread(use_sync_client)
        assert error is not None and "nope" in error
    finally:
        pool.stop()


async def test_results_stream_websocket_delivers_live_events(master: LocalMaster) -> None:
    pool = await _workers(master, "mawex.examples.demo:echo", "live", "pod-c")
    url = master.url.replace("http", "ws") + "/v1/results/stream?from=0"
    try:
        async with connect(url) as stream, master.client() as client:
            await client.submit("live", 7, id="s1")
            seen = []
            async with asyncio.timeout(10):
                while not any(e["type"] == "completed" for e in seen):
                    seen.append(json.loads(await stream.recv()))
            assert [e["type"] for e in seen] == ["scheduled", "completed"]
            assert seen[1]["result"] == 7 and seen[1]["offset"] == 2
    finally:
        pool.stop()


async def test_state_and_ops_endpoints(master: LocalMaster) -> None:
    pool = await _workers(master, "mawex.examples.demo:echo", "a,b", "pod-d")
    try:
        async with httpx.AsyncClient(base_url=master.url) as http:
            state = (await http.get("/v1/state")).json()
            assert state["leader"] is True and state["epoch"] >= 1
            assert {w["group"] for w in state["workers"]} == {"a", "b"}
            assert {w["status"] for w in state["workers"]} == {"idle"}
            assert (await http.get("/healthz")).status_code == 200
            assert (await http.get("/readyz")).status_code == 200
            assert "mawex_tasks_accepted_total" in (await http.get("/metrics")).text
            assert (await http.get("/")).status_code == 200
    finally:
        pool.stop()


async def test_token_is_required_everywhere_but_healthz() -> None:
    async with LocalMaster(MemoryJournal(), token="s3cret") as local:
        async with httpx.AsyncClient(base_url=local.url) as http:
            assert (await http.get("/healthz")).status_code == 200
            denied = await http.get("/v1/state")
            assert denied.status_code == 401
            assert denied.json()["error"] == "unauthorized"
            assert "s3cret" not in denied.text
            wrong = await http.get("/v1/state", headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
            ok = await http.get("/v1/state", headers={"Authorization": "Bearer s3cret"})
            assert ok.status_code == 200
        async with local.client() as client:
            await client.submit("g", 1, id="t")
        with pytest.raises(mawex.Unauthorized):
            async with mawex.AsyncClient(local.url, token="wrong") as bad:
                await bad.submit("g", 1, id="t2")


async def test_batch_names_its_duplicates_when_asked(master: LocalMaster) -> None:
    async with httpx.AsyncClient(base_url=master.url) as http:
        first = await http.post("/v1/tasks/batch", json={"tasks": [{"id": "a", "group": "d"}]})
        assert first.json() == {"accepted": 1, "duplicates": 0}
        tasks = [{"id": i, "group": "d"} for i in ("b", "a", "c", "b")]
        named = await http.post(
            "/v1/tasks/batch", params={"duplicate_indexes": "1"}, json={"tasks": tasks}
        )
        assert named.status_code == 202
        assert named.json() == {"accepted": 2, "duplicates": 2, "duplicate_indexes": [1, 3]}
        plain = await http.post("/v1/tasks/batch", json={"tasks": tasks})
        assert plain.json() == {"accepted": 0, "duplicates": 4}
        bad = await http.post(
            "/v1/tasks/batch", params={"duplicate_indexes": "maybe"}, json={"tasks": tasks}
        )
        assert bad.status_code == 400
        assert "duplicate_indexes" in bad.json()["detail"]


async def test_run_submits_and_waits_in_one_request(master: LocalMaster) -> None:
    pool = await _workers(master, "mawex.examples.demo:echo", "r", "pod-r")
    failing = await _workers(master, "mawex.examples.demo:fail", "rf", "pod-rf")
    try:
        async with master.client() as client:
            assert await client.run("r", {"n": 1}, id="r1", timeout=10) == {"n": 1}
            # idempotent: the same identity again answers the first run's result
            assert await client.run("r", {"n": 2}, id="r1", timeout=10) == {"n": 1}
            with pytest.raises(mawex.TaskFailed, match="fails on purpose"):
                await client.run("rf", None, max_attempts=1, timeout=10)
            # nobody serves the group: the wait ends, the task stays queued
            with pytest.raises(mawex.ResultTimeout):
                await client.run("nobody", 1, id="q1", timeout=0.3)
            assert (await client.get("nobody", "q1")).status == "pending"

        def in_a_thread() -> object:
            with mawex.Client(master.url) as sync:
                return sync.run("r", [1, 2], timeout=10)

        assert await asyncio.to_thread(in_a_thread) == [1, 2]

        async with httpx.AsyncClient(base_url=master.url) as http:
            raw = await http.post(
                "/v1/tasks", params={"wait": "10"}, json={"id": "raw", "group": "r", "payload": 7}
            )
            assert raw.status_code == 202
            body = raw.json()
            assert (body["id"], body["status"], body["duplicate"]) == ("raw", "accepted", False)
            assert body["task"]["status"] == "completed" and body["task"]["result"] == 7
            plain = await http.post("/v1/tasks", json={"id": "plain", "group": "nobody"})
            assert "task" not in plain.json()
            bad = await http.post("/v1/tasks", params={"wait": "61"}, json={"group": "r"})
            assert bad.status_code == 400 and "wait" in bad.json()["detail"]
    finally:
        pool.stop()
        failing.stop()


async def test_both_clients_with_busy_poll(master: LocalMaster) -> None:
    """Clients that await replies without sleeping: same answers, failures and waits."""
    pool = await _workers(master, "mawex.examples.demo:echo", "bp", "pod-bp")
    failing = await _workers(master, "mawex.examples.demo:fail", "bpf", "pod-bpf")
    try:
        async with mawex.AsyncClient(master.url, busy_poll=0.002) as client:
            for n in range(20):
                assert await client.run("bp", {"n": n}, timeout=10) == {"n": n}
            with pytest.raises(mawex.TaskFailed, match="fails on purpose"):
                await client.run("bpf", None, max_attempts=1, timeout=10)
            with pytest.raises(mawex.ResultTimeout):  # longer than the window: still waited
                await client.run("nobody", 1, id="bq1", timeout=0.3)

        def in_a_thread() -> list[object]:
            with mawex.Client(master.url, busy_poll=0.002) as sync:
                results: list[object] = [sync.run("bp", [n], timeout=10) for n in range(20)]
                with pytest.raises(mawex.TaskFailed):
                    sync.run("bpf", None, max_attempts=1, timeout=10)
                with pytest.raises(mawex.ResultTimeout):
                    sync.run("nobody", 1, id="bq2", timeout=0.3)
                results.append(sync.get("nobody", "bq2").status)
                return results

        assert await asyncio.to_thread(in_a_thread) == [[n] for n in range(20)] + ["pending"]
    finally:
        pool.stop()
        failing.stop()


async def test_a_subscriber_that_leaves_a_quiet_stream_is_let_go(master: LocalMaster) -> None:
    url = master.url.replace("http", "ws") + "/v1/results/stream?from=0"
    streams = [await connect(url) for _ in range(5)]
    await wait_until_async(lambda: master.engine.topic.subscribers == 5, "5 waiting streams")
    for stream in streams:
        await stream.close()
    # nothing is published: the master notices the closes by itself
    await wait_until_async(lambda: master.engine.topic.subscribers == 0, "streams let go")


async def wait_until_async(check: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("level", [logging.DEBUG, logging.INFO])
async def test_a_worker_logs_each_attempt_at_its_level(
    master: LocalMaster, caplog: pytest.LogCaptureFixture, level: int
) -> None:
    """Per-task lines at debug level (a failure at warning), each naming its attempt."""
    caplog.set_level(level, logger="mawex.worker")
    echo = await _workers(master, "mawex.examples.demo:echo", "ok", "pod-ok")
    fail = await _workers(master, "mawex.examples.demo:fail", "bad", "pod-bad")
    try:
        async with master.client() as client:
            assert await client.run("ok", 1, id="fine", timeout=10) == 1
            with pytest.raises(mawex.TaskFailed):
                await client.run("bad", {"error": "nope"}, id="broken", max_attempts=1, timeout=10)
            await wait_until_async(lambda: not echo.workers[0]._unacked, "the result's ack")
    finally:
        echo.stop()
        fail.stop()
    lines = {
        (r.levelno, r.getMessage(), getattr(r, "attempt", None))
        for r in caplog.records
        if r.name == "mawex.worker"
    }
    failed = (logging.WARNING, "attempt finished", "bad/broken#1")
    debug = {
        (logging.DEBUG, "running", "ok/fine#1"),
        (logging.DEBUG, "attempt finished", "ok/fine#1"),
        (logging.DEBUG, "result acknowledged", "ok/fine#1"),
        (logging.DEBUG, "running", "bad/broken#1"),
    }
    assert failed in lines
    assert debug <= lines if level == logging.DEBUG else not debug & lines
