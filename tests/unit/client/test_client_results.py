"""Both clients: iterating the result topic, page by page, live, and across a failover."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from mawex.model import ResultEvent

from .conftest import Driver, FakeCluster, FakeMaster

Connect = Callable[..., Driver]


def publish(cluster: FakeCluster, n: int) -> None:
    for i in range(n):
        cluster.publish("completed", "g", f"t{i}", result=i)


def froms(cluster: FakeCluster) -> list[int]:
    return [int(r.url.params["from"]) for r in cluster.requests]


async def test_pages_until_the_end(cluster: FakeCluster, connect: Connect) -> None:
    cluster.add("http://a:1")
    publish(cluster, 5)
    events = await connect("http://a:1").collect(follow=False, limit=2)
    assert [e.offset for e in events] == [0, 1, 2, 3, 4]
    assert events[0] == ResultEvent(
        offset=0, type="completed", id="t0", group="g", attempt=1, at=1.5, result=0
    )
    assert froms(cluster) == [0, 2, 4, 5]
    assert all("wait" not in r.url.params for r in cluster.requests)
    assert {r.url.params["limit"] for r in cluster.requests} == {"2"}


async def test_from_offset(cluster: FakeCluster, connect: Connect) -> None:
    cluster.add("http://a:1")
    publish(cluster, 5)
    events = await connect("http://a:1").collect(from_offset=3, follow=False)
    assert [e.id for e in events] == ["t3", "t4"]


async def test_unknown_event_fields_are_ignored(cluster: FakeCluster, connect: Connect) -> None:
    cluster.add("http://a:1")
    cluster.publish("scheduled", "g", "t", worker="w1", pod="p1", shiny_new_field=[1])
    [event] = await connect("http://a:1").collect(follow=False)
    assert (event.type, event.worker, event.pod) == ("scheduled", "w1", "p1")


async def test_follow_long_polls_for_new_events(cluster: FakeCluster, connect: Connect) -> None:
    cluster.add("http://a:1")
    publish(cluster, 1)
    empty_polls = []

    def more() -> None:
        empty_polls.append(cluster.clock.now)
        if len(empty_polls) == 2:
            cluster.publish("failed", "g", "late", error="boom")

    cluster.on_empty_results = more
    events = await connect("http://a:1").collect(n=2)
    assert [(e.id, e.type, e.error) for e in events] == [
        ("t0", "completed", None),
        ("late", "failed", "boom"),
    ]
    assert froms(cluster) == [0, 1, 1]
    assert {r.url.params["wait"] for r in cluster.requests} == {"25"}
    assert cluster.clock.sleeps == []  # the master held the empty poll: no extra pause


async def test_resumes_from_next_after_a_failover(cluster: FakeCluster, connect: Connect) -> None:
    # Given a leader that dies after serving a first page
    a = cluster.add("http://a:1", "leader")
    cluster.add("http://b:2", "standby")
    publish(cluster, 3)

    def die() -> None:
        a.role = "down"

    client = connect("http://a:1,http://b:2")
    first = await client.collect(n=2, limit=2)
    die()
    publish(cluster, 2)
    # When iterating on, the standby (which serves results too) answers from `next`
    events = await client.collect(from_offset=first[-1].offset + 1, limit=2, follow=False)
    assert [e.offset for e in first + events] == [0, 1, 2, 3, 4]
    assert [r.url.host for r in cluster.requests][-4:] == ["a", "b", "b", "b"]


async def test_failover_mid_iteration_neither_loses_nor_repeats(
    cluster: FakeCluster, connect: Connect
) -> None:
    a = cluster.add("http://a:1", "leader")
    b = cluster.add("http://b:2", "standby")
    publish(cluster, 6)
    served = []
    route = cluster.route

    def spy(request: httpx.Request, master: FakeMaster) -> httpx.Response:
        served.append(master.url)
        response = route(request, master)
        if master is a and len(served) == 2:
            a.role = "down"  # dies after its second page
        if master is b and len(served) == 3:
            # b lags behind and repeats events the client has seen: they are skipped
            start = int(request.url.params["from"])
            page = [e for e in cluster.events if e["offset"] >= start - 2][:4]
            response = httpx.Response(200, json={"events": page, "next": page[-1]["offset"] + 1})
        return response

    cluster.route = spy  # type: ignore[method-assign]
    events = await connect("http://a:1,http://b:2").collect(follow=False, limit=2)
    assert [e.offset for e in events] == [0, 1, 2, 3, 4, 5]
    assert [r.url.host for r in cluster.requests] == ["a", "a", "a", "b", "b"]
    assert froms(cluster) == [0, 2, 4, 4, 6]
    assert b.requests


async def test_follow_does_not_spin_on_a_master_ignoring_wait(
    cluster: FakeCluster, connect: Connect
) -> None:
    cluster.add("http://a:1")
    cluster.honour_wait = False
    polls = []

    def later() -> None:
        polls.append(1)
        if len(polls) == 6:
            publish(cluster, 1)

    cluster.on_empty_results = later
    [event] = await connect("http://a:1").collect(n=1)
    assert event.offset == 0
    assert cluster.clock.sleeps == [0.05, 0.1, 0.2, 0.4, 0.8]
