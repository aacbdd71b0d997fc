"""Both clients: submit, submit_many (chunking), get, cancel and result (long polling)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from mawex.client import BatchReceipt
from mawex.errors import (
    NotFound,
    Rejected,
    ResultTimeout,
    TaskCancelled,
    TaskExpired,
    TaskFailed,
    TooLarge,
)
from mawex.model import TaskStatus

from .conftest import Driver, FakeCluster, error

Connect = Callable[..., Driver]


def bodies(cluster: FakeCluster, path: str) -> list[Any]:
    return [json.loads(r.content) for r in cluster.requests if r.url.path == path]


async def test_submit_body_and_duplicates(cluster: FakeCluster, connect: Connect) -> None:
    cluster.add("http://a:1")
    client = connect("http://a:1")
    first = await client.submit("g", {"k": [1, 2]}, id="t1", max_attempts=3, timeout_s=2.5)
    again = await client.submit("g", {"k": [1, 2]}, id="t1")
    fresh = await client.submit("g")
    assert (first.duplicate, again.duplicate, fresh.duplicate) == (False, True, False)
    assert len(fresh.id) == 32
    sent = bodies(cluster, "/v1/tasks")
    assert sent[0] == {
        "id": "t1",
        "group": "g",
        "payload": {"k": [1, 2]},
        "max_attempts": 3,
        "timeout_s": 2.5,
    }
    assert sent[1] == {"id": "t1", "group": "g", "payload": {"k": [1, 2]}}
    assert cluster.requests[0].headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (("bad group!",), {}, "invalid group"),
        (("g",), {"id": "has/slash"}, "invalid id"),
        (("g", float("nan")), {}, "not JSON-serializable"),
        (("g", object()), {}, "not JSON-serializable"),
    ],
)
async def test_submit_rejects_bad_input_without_a_request(
    cluster: FakeCluster, connect: Connect, args: tuple[Any, ...], kwargs: Any, match: str
) -> None:
    cluster.add("http://a:1")
    with pytest.raises(Rejected, match=match):
        await connect("http://a:1").submit(*args, **kwargs)
    assert cluster.requests == []


async def test_server_rejection_keeps_detail(cluster: FakeCluster, connect: Connect) -> None:
    a = cluster.add("http://a:1")
    a.fail_next.append(error(422, "invalid", "max_attempts: must be <= 100"))
    with pytest.raises(Rejected, match=r"^max_attempts: must be <= 100$"):
        await connect("http://a:1").submit("g", max_attempts=1000)


async def test_submit_many_chunks(cluster: FakeCluster, connect: Connect) -> None:
    cluster.add("http://a:1")
    tasks = ({"id": f"t{i}", "payload": i} for i in range(2500))  # any iterable, even lazy
    receipt = await connect("http://a:1").submit_many(tasks, group="g")
    assert receipt == BatchReceipt(accepted=2500, duplicates=0)
    sizes = [len(b["tasks"]) for b in bodies(cluster, "/v1/tasks/batch")]
    assert sizes == [1000, 1000, 500]
    assert len(cluster.tasks) == 2500


async def test_submit_many_fills_defaults(cluster: FakeCluster, connect: Connect) -> None:
    cluster.add("http://a:1")
    tasks = [
        {"payload": 1},
        {"id": "x", "group": "h", "payload": 2, "max_attempts": 2, "timeout_s": 1},
        {"id": "x", "group": "h", "payload": 2},
    ]
    receipt = await connect("http://a:1").submit_many(tasks, group="g", chunk_size=2)
    assert receipt == BatchReceipt(accepted=2, duplicates=1)
    sent = [t for b in bodies(cluster, "/v1/tasks/batch") for t in b["tasks"]]
    assert sent[0]["group"] == "g"
    assert len(sent[0]["id"]) == 32
    assert sent[1] == {
        "id": "x",
        "group": "h",
        "payload": 2,
        "max_attempts": 2,
        "timeout_s": 1,
    }


async def test_submit_many_adapts_to_a_lower_cap(cluster: FakeCluster, connect: Connect) -> None:
    cluster.add("http://a:1")
    cluster.max_batch = 300
    tasks = [{"id": f"t{i}"} for i in range(1200)]
    receipt = await connect("http://a:1").submit_many(tasks, group="g")
    assert receipt == BatchReceipt(accepted=1200, duplicates=0)
    sizes = [len(b["tasks"]) for b in bodies(cluster, "/v1/tasks/batch")]
    assert sizes[:3] == [1000, 500, 250]  # two 413s, then every request fits
    assert all(s <= 300 for s in sizes[2:])
    assert sum(sizes[2:]) == 1200


async def test_submit_many_single_task_too_large(cluster: FakeCluster, connect: Connect) -> None:
    cluster.add("http://a:1")
    cluster.max_batch = 0
    with pytest.raises(TooLarge, match="at most 0 tasks"):
        await connect("http://a:1").submit_many([{"id": "a"}, {"id": "b"}], group="g")


async def test_submit_many_empty_and_invalid(cluster: FakeCluster, connect: Connect) -> None:
    cluster.add("http://a:1")
    client = connect("http://a:1")
    assert await client.submit_many([], group="g") == BatchReceipt(0, 0)
    with pytest.raises(Rejected, match="task #1: unknown field"):
        await client.submit_many([{"id": "a"}, {"id": "b", "prio": 1}], group="g")
    with pytest.raises(Rejected, match="task #0 has no group"):
        await client.submit_many([{"id": "a"}])
    assert cluster.requests == []


async def test_get_and_cancel(cluster: FakeCluster, connect: Connect) -> None:
    cluster.add("http://a:1")
    cluster.add_task("g", "t:1@x", "running", attempt=2, errors=["first try died"])
    client = connect("http://a:1")
    task = await client.get("g", "t:1@x")
    assert (task.status, task.attempt, task.errors) == (TaskStatus.RUNNING, 2, ["first try died"])
    cancelled = await client.cancel("g", "t:1@x")
    assert cancelled.status is TaskStatus.CANCELLED
    assert [r.method for r in cluster.requests] == ["GET", "DELETE"]
    with pytest.raises(NotFound, match="no task g/nope"):
        await client.get("g", "nope")


async def test_result_long_polls(cluster: FakeCluster, connect: Connect) -> None:
    cluster.add("http://a:1")
    cluster.add_task("g", "t")
    polls = []

    def finish_on_third_poll(task: dict[str, Any]) -> None:
        polls.append(task)
        if len(polls) == 3:
            task.update(status="completed", result={"answer": 42})

    cluster.on_poll = finish_on_third_poll
    start = cluster.clock.now
    assert await connect("http://a:1").result("g", "t") == {"answer": 42}
    assert [r.url.params["wait"] for r in cluster.requests] == ["25", "25", "25"]
    assert cluster.clock.now - start == 50  # two held polls, then the answer
    assert cluster.clock.sleeps == []


async def test_result_timeout(cluster: FakeCluster, connect: Connect) -> None:
    cluster.add("http://a:1")
    cluster.add_task("g", "t", "running")
    with pytest.raises(ResultTimeout, match="task g/t still running after 60s"):
        await connect("http://a:1").result("g", "t", timeout=60)
    assert [r.url.params["wait"] for r in cluster.requests] == ["25", "25", "10"]
    with pytest.raises(ResultTimeout):
        await connect("http://a:1").result("g", "t", timeout=0)
    assert "wait" not in cluster.requests[-1].url.params


async def test_result_does_not_spin_on_a_master_ignoring_wait(
    cluster: FakeCluster, connect: Connect
) -> None:
    cluster.add("http://a:1")
    cluster.add_task("g", "t", "pending")
    cluster.honour_wait = False
    with pytest.raises(ResultTimeout):
        await connect("http://a:1").result("g", "t", timeout=10)
    # Answers come back at once, so the client paces itself: 0.05, 0.1, … 1 s.
    assert len(cluster.requests) < 20
    assert cluster.clock.sleeps[:3] == [0.05, 0.1, 0.2]
    assert max(cluster.clock.sleeps) == 1.0


@pytest.mark.parametrize(
    ("status", "error_cls"),
    [("failed", TaskFailed), ("cancelled", TaskCancelled), ("expired", TaskExpired)],
)
async def test_result_raises_for_unsuccessful_tasks(
    cluster: FakeCluster, connect: Connect, status: str, error_cls: type[TaskFailed]
) -> None:
    cluster.add("http://a:1")
    cluster.add_task("g", "t", status, error="ValueError: boom")
    with pytest.raises(error_cls) as info:
        await connect("http://a:1").result("g", "t", timeout=5)
    assert type(info.value) is error_cls
    assert (info.value.group, info.value.id, info.value.error) == ("g", "t", "ValueError: boom")
    assert info.value.task_status == status
    assert len(cluster.requests) == 1


async def test_result_follows_failover(cluster: FakeCluster, connect: Connect) -> None:
    a = cluster.add("http://a:1")
    cluster.add("http://b:2", "standby")
    cluster.add_task("g", "t")

    def leader_dies(task: dict[str, Any]) -> None:
        if len(cluster.requests) == 2:
            a.role = "down"  # after answering this poll
        if len(cluster.requests) == 4:
            task.update(status="completed", result=7)

    cluster.on_poll = leader_dies
    assert await connect("http://a:1,http://b:2").result("g", "t") == 7
    assert [r.url.host for r in cluster.requests] == ["a", "a", "a", "b"]


async def test_run_answers_in_one_request_when_the_task_ends_in_time(
    cluster: FakeCluster, connect: Connect
) -> None:
    cluster.add("http://a:1")
    cluster.on_poll = lambda task: task.update(status="completed", result={"ok": 1})
    assert await connect("http://a:1").run("g", {"x": 1}, id="t") == {"ok": 1}
    assert [(r.method, r.url.path, r.url.params.get("wait")) for r in cluster.requests] == [
        ("POST", "/v1/tasks", "25")
    ]


async def test_run_goes_on_with_long_polls_and_keeps_its_deadline(
    cluster: FakeCluster, connect: Connect
) -> None:
    cluster.add("http://a:1")
    with pytest.raises(ResultTimeout, match="task g/t still pending after 60s"):
        await connect("http://a:1").run("g", None, id="t", timeout=60)
    # the POST waited 25 s, then long polls for the 35 s left
    assert [(r.method, r.url.params.get("wait")) for r in cluster.requests] == [
        ("POST", "25"),
        ("GET", "25"),
        ("GET", "10"),
    ]
    assert cluster.tasks["g", "t"]["status"] == "pending"
