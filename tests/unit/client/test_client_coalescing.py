"""AsyncClient: concurrent submit calls coalesced into batches, against fake masters."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from mawex.client import AsyncClient, SubmitReceipt
from mawex.errors import Unauthorized, Unavailable

from .conftest import FakeCluster, error


@pytest.fixture
async def connect(cluster: FakeCluster) -> AsyncIterator[Callable[..., AsyncClient]]:
    clients: list[AsyncClient] = []

    def make(masters: str, **kwargs: Any) -> AsyncClient:
        client = AsyncClient(masters, transport=httpx.MockTransport(cluster.handler), **kwargs)

        async def sleep(seconds: float) -> None:
            cluster.clock.sleep(seconds)

        client._sleep = sleep  # type: ignore[assignment]
        client._core.clock = cluster.clock
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


def sent(request: httpx.Request) -> list[str]:
    body = json.loads(request.content)
    return [t["id"] for t in body["tasks"]] if "tasks" in body else [body["id"]]


async def submit_all(client: AsyncClient, ids: list[str | None]) -> list[SubmitReceipt]:
    return await asyncio.gather(*(client.submit("g", n, id=id) for n, id in enumerate(ids)))


async def test_a_batch_whose_answer_is_lost_is_retried_with_the_same_ids(
    cluster: FakeCluster, connect: Callable[..., AsyncClient]
) -> None:
    # Given a leader that accepts a batch but whose answer is lost
    a = cluster.add("http://a:1", "leader")
    a.fail_next.append("lose-answer")
    cluster.add("http://b:2", "standby", hint="http://a:1")
    client = connect("http://a:1,http://b:2")
    # When many calls wait together, some with generated ids
    receipts = await submit_all(client, [f"t{i}" if i % 2 else None for i in range(50)])
    # Then the batch goes a → b (standby, hint a) → backoff → a, always the same tasks,
    # and as for a single submit, the resent tasks come back as duplicates
    assert [r.url.host for r in cluster.requests] == ["a", "b", "a"]
    assert sent(cluster.requests[0]) == sent(cluster.requests[2]) == [r.id for r in receipts]
    assert all(r.duplicate for r in receipts)
    assert list(cluster.tasks) == [("g", r.id) for r in receipts]


async def test_a_lower_batch_cap_is_learnt(
    cluster: FakeCluster, connect: Callable[..., AsyncClient]
) -> None:
    cluster.add("http://a:1")
    cluster.max_batch = 300
    client = connect("http://a:1")
    ids: list[str | None] = [f"t{i:04}" for i in range(1000)]
    receipts = await submit_all(client, ids)
    assert [r.id for r in receipts] == ids
    assert not any(r.duplicate for r in receipts)
    assert [len(sent(r)) for r in cluster.requests][:3] == [1000, 500, 250]
    assert list(cluster.tasks) == [("g", id) for id in ids]
    assert client._core.coalesce_limit == 250
    await submit_all(client, [f"u{i}" for i in range(600)])
    assert max(len(sent(r)) for r in cluster.masters["http://a:1"].requests[-3:]) <= 250


async def test_per_task_duplicates_from_the_master_are_followed(
    cluster: FakeCluster, connect: Callable[..., AsyncClient]
) -> None:
    cluster.add("http://a:1")
    cluster.per_item = True
    cluster.add_task("g", "old")
    client = connect("http://a:1")
    receipts = await submit_all(client, ["new", "old", "new", "x", None])
    assert [r.duplicate for r in receipts] == [False, True, True, False, False]
    assert sent(cluster.requests[0]) == ["new", "old", "x", receipts[4].id]  # "new" once


async def test_counts_only_tell_named_ids_from_generated_ones(
    cluster: FakeCluster, connect: Callable[..., AsyncClient]
) -> None:
    cluster.add("http://a:1")
    cluster.add_task("g", "old")
    client = connect("http://a:1")
    receipts = await submit_all(client, [None, "old", None])
    assert [r.duplicate for r in receipts] == [False, True, False]


async def test_unavailable_fails_every_waiting_caller(
    cluster: FakeCluster, connect: Callable[..., AsyncClient]
) -> None:
    cluster.add("http://a:1", "down")
    client = connect("http://a:1", failover_timeout=5.0)
    outcomes = await asyncio.gather(
        *(client.submit("g", id=f"t{i}") for i in range(20)), return_exceptions=True
    )
    assert all(isinstance(o, Unavailable) for o in outcomes)
    assert len({id(o) for o in outcomes}) == 20  # each caller its own exception object
    assert "connection refused" in str(outcomes[-1])


async def test_unauthorized_fails_every_caller_without_splitting(
    cluster: FakeCluster, connect: Callable[..., AsyncClient]
) -> None:
    cluster.add("http://a:1")
    cluster.token = "s3cret"
    client = connect("http://a:1", token="wrong")
    outcomes = await asyncio.gather(
        *(client.submit("g", id=f"t{i}") for i in range(20)), return_exceptions=True
    )
    assert all(isinstance(o, Unauthorized) for o in outcomes)
    assert len(cluster.requests) == 1


async def test_a_rejection_without_a_culprit_is_bisected_down_to_single_requests(
    cluster: FakeCluster, connect: Callable[..., AsyncClient]
) -> None:
    a = cluster.add("http://a:1")
    a.fail_next += [error(400, "invalid", "something about the batch")] * 3
    client = connect("http://a:1")
    receipts = await submit_all(client, [f"t{i}" for i in range(8)])
    assert [len(sent(r)) for r in cluster.requests] == [8, 4, 2, 1, 1, 2, 4]
    assert [r.id for r in receipts] == [f"t{i}" for i in range(8)]
    assert list(cluster.tasks) == [("g", f"t{i}") for i in range(8)]
