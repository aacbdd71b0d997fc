"""Both clients against fake masters: leader hints, rotation, retries, deadlines, auth."""

from __future__ import annotations

import json
from collections.abc import Callable

import certifi
import httpx
import pytest

from mawex.client import AsyncClient, Client, SubmitReceipt
from mawex.errors import MawexError, Unauthorized, Unavailable

from .conftest import Driver, FakeCluster, error

Connect = Callable[..., Driver]


def hosts(requests: list[httpx.Request]) -> list[str]:
    return [r.url.host for r in requests]


async def test_follows_not_leader_hint_to_a_url_not_in_the_list(
    cluster: FakeCluster, connect: Connect
) -> None:
    # Given a standby that names a leader the client was not told about
    cluster.add("http://a:1", "standby", hint="http://c:3/")
    cluster.add("http://b:2", "down")
    cluster.add("http://c:3", "leader")
    client = connect("http://a:1,http://b:2")
    # When a task is submitted
    receipt = await client.submit("g", {"x": 1}, id="t1")
    # Then it went a → c (the hint), skipping b, and c is now preferred
    assert receipt == SubmitReceipt(id="t1", group="g", duplicate=False)
    assert hosts(cluster.requests) == ["a", "c"]
    assert client.client.masters == ["http://c:3", "http://a:1", "http://b:2"]
    await client.get("g", "t1")
    assert hosts(cluster.requests)[-1] == "c"


async def test_rotates_past_refused_and_failing_masters(
    cluster: FakeCluster, connect: Connect
) -> None:
    cluster.add("http://a:1", "down")
    b = cluster.add("http://b:2", "leader")
    b.fail_next.append(error(500, "journal_error", "disk full"))
    cluster.add("http://c:3", "leader")
    receipt = await connect(["http://a:1", "http://b:2", "http://c:3"]).submit("g", 1, id="t")
    assert receipt.id == "t"
    assert hosts(cluster.requests) == ["a", "b", "c"]
    assert cluster.clock.sleeps == []  # no backoff within the first round


async def test_standby_without_hint_rotates(cluster: FakeCluster, connect: Connect) -> None:
    cluster.add("http://a:1", "standby", hint=None)
    cluster.add("http://b:2", "leader")
    await connect("http://a:1,http://b:2").submit("g", id="t")
    assert hosts(cluster.requests) == ["a", "b"]


async def test_retried_submit_keeps_its_id(cluster: FakeCluster, connect: Connect) -> None:
    # Given a leader that accepts the task but whose answer is lost
    a = cluster.add("http://a:1", "leader")
    a.fail_next.append("lose-answer")
    cluster.add("http://b:2", "standby", hint="http://a:1")
    client = connect("http://a:1,http://b:2")
    # When the client submits without an id
    receipt = await client.submit("g", {"n": 1})
    # Then a → b (standby, hint a) → backoff → a, always with the same generated id
    ids = {json.loads(r.content)["id"] for r in cluster.requests}
    assert hosts(cluster.requests) == ["a", "b", "a"]
    assert ids == {receipt.id}
    assert receipt.duplicate is True
    assert len(cluster.tasks) == 1


async def test_unavailable_after_backing_off_until_the_deadline(
    cluster: FakeCluster, connect: Connect
) -> None:
    cluster.add("http://a:1", "down")
    cluster.add("http://b:2", "standby", hint=None)
    client = connect("http://a:1,http://b:2", failover_timeout=10.0)
    start = cluster.clock.now
    with pytest.raises(Unavailable) as info:
        await client.submit("g", id="t")
    message = str(info.value)
    assert "http://a:1 (ConnectError: connection refused)" in message
    assert "http://b:2 (not leader, leader unknown)" in message
    assert cluster.clock.now - start == pytest.approx(10.0)
    sleeps = cluster.clock.sleeps
    assert 0.05 <= sleeps[0] <= 0.1
    assert max(sleeps) <= 2.0
    assert sleeps[:4] == sorted(sleeps[:4])
    assert len(cluster.requests) == 2 * len(sleeps) + 2  # every round tries both


async def test_recovers_when_a_leader_is_elected_during_backoff(
    cluster: FakeCluster, connect: Connect
) -> None:
    a = cluster.add("http://a:1", "standby", hint=None)
    cluster.add("http://b:2", "down")
    client = connect("http://a:1,http://b:2")

    def elect(seconds: float) -> None:
        cluster.clock.now += seconds
        if cluster.clock.now > 1001.0:
            a.role = "leader"

    cluster.clock.sleep = elect  # type: ignore[method-assign]
    receipt = await client.submit("g", id="t")
    assert receipt.id == "t"
    assert cluster.masters["http://a:1"].requests[-1].method == "POST"


async def test_client_errors_are_not_retried(cluster: FakeCluster, connect: Connect) -> None:
    a = cluster.add("http://a:1", "leader")
    cluster.add("http://b:2", "leader")
    a.fail_next.append(error(429, "queue_full", "group g has 10000 pending tasks"))
    with pytest.raises(MawexError, match="group g has 10000 pending tasks") as info:
        await connect("http://a:1,http://b:2").submit("g", id="t")
    assert info.value.code == "queue_full"
    assert hosts(cluster.requests) == ["a"]


async def test_token_is_sent_on_every_request(cluster: FakeCluster, connect: Connect) -> None:
    cluster.token = "s3cret"
    cluster.add("http://a:1", "standby", hint="http://b:2")
    cluster.add("http://b:2", "leader")
    client = connect("http://a:1,http://b:2", token="s3cret")
    await client.submit("g", id="t")
    await client.get("g", "t")
    await client.state()
    assert len(cluster.requests) >= 4
    assert {r.headers["authorization"] for r in cluster.requests} == {"Bearer s3cret"}
    with pytest.raises(Unauthorized, match="a valid bearer token is required"):
        await connect("http://b:2", token="wrong").get("g", "t")
    with pytest.raises(Unauthorized):
        await connect("http://b:2").get("g", "t")


async def test_state_prefers_the_leader(cluster: FakeCluster, connect: Connect) -> None:
    cluster.add("http://a:1", "standby")
    cluster.add("http://b:2", "down")
    cluster.add("http://c:3", "leader")
    state = await connect("http://a:1,http://b:2,http://c:3").state()
    assert state == {"leader": True, "url": "http://c:3"}


async def test_state_from_a_standby_when_no_leader(cluster: FakeCluster, connect: Connect) -> None:
    cluster.add("http://a:1", "down")
    cluster.add("http://b:2", "standby")
    state = await connect("http://a:1,http://b:2").state()
    assert state == {"leader": False, "url": "http://b:2"}


async def test_malformed_success_body(cluster: FakeCluster, connect: Connect) -> None:
    a = cluster.add("http://a:1")
    a.fail_next.append(httpx.Response(200, text="<html>hello</html>"))
    with pytest.raises(MawexError, match="malformed response"):
        await connect("http://a:1").get("g", "t")


def test_constructor_options() -> None:
    with Client("http://a:1, https://b:2/", token="t", ca=certifi.where(), timeout=None) as client:
        assert client.masters == ["http://a:1", "https://b:2"]
        assert client._http.headers["authorization"] == "Bearer t"
        assert client._http.timeout == httpx.Timeout(None)
        assert repr(client) == "Client('http://a:1,https://b:2')"


async def test_async_context_manager_closes() -> None:
    async with AsyncClient(["http://a:1"], timeout=3.0) as client:
        assert client._http.timeout == httpx.Timeout(3.0)
    assert client._http.is_closed
    with Client("http://a:1") as sync:
        pass
    assert sync._http.is_closed
