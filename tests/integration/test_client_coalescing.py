"""AsyncClient.submit against real masters over HTTP: concurrent calls share batch requests.

Requests are counted by a transport wrapped round httpx's own, so what is counted
is what reached the socket.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

import mawex
from mawex.journal.memory import MemoryJournal
from mawex.local import LocalMaster
from mawex.wire.api import ApiLimits

GROUP = "g"


class CountingTransport(httpx.AsyncBaseTransport):
    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.paths: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture
async def master() -> AsyncIterator[LocalMaster]:
    async with LocalMaster(MemoryJournal(), api_limits=ApiLimits(max_payload_bytes=1000)) as m:
        yield m


def accepted_ids(master: LocalMaster, group: str = GROUP) -> list[str]:
    """The group's tasks in the order the master accepted them."""
    return [id for g, id in master.engine.state.tasks if g == group]


async def test_a_lone_caller_sends_one_request_per_submit_at_once(master: LocalMaster) -> None:
    transport = CountingTransport()
    async with master.client(transport=transport) as client:
        for i in range(5):
            started = time.perf_counter()
            receipt = await client.submit(GROUP, i, id=f"t{i}")
            assert time.perf_counter() - started < 0.5
            assert receipt == mawex.SubmitReceipt(f"t{i}", GROUP, duplicate=False)
    assert transport.paths == ["/v1/tasks"] * 5


async def test_concurrent_submits_share_requests_in_call_order(master: LocalMaster) -> None:
    transport = CountingTransport()
    async with master.client(transport=transport) as client:
        receipts = await asyncio.gather(
            *(client.submit(GROUP, {"n": i}, id=f"t{i:04}") for i in range(2500)),
            *(client.submit("other", i) for i in range(100)),  # generated ids, another group
        )
    assert [r.id for r in receipts[:2500]] == [f"t{i:04}" for i in range(2500)]
    assert [r.group for r in receipts] == [GROUP] * 2500 + ["other"] * 100
    assert len({r.id for r in receipts[2500:]}) == 100
    assert not any(r.duplicate for r in receipts)
    # all made in one event-loop turn: sent at once, in batches of at most 1000
    assert transport.paths == ["/v1/tasks/batch"] * 3
    assert accepted_ids(master) == [f"t{i:04}" for i in range(2500)]
    assert master.engine.state.pending_count("other") == 100
    assert master.engine.get(GROUP, "t0042")["id"] == "t0042"


async def test_an_invalid_task_fails_only_its_caller_as_a_single_submit(
    master: LocalMaster,
) -> None:
    bad = {
        50: {"id": "bad1", "max_attempts": 10_000},
        120: {"id": "bad2", "payload": "x" * 2000},
        121: {"id": "bad3", "timeout_s": -1},
    }
    async with master.client() as client:
        # what each raises when submitted alone (one POST /v1/tasks): nothing is accepted
        alone: dict[int, mawex.MawexError] = {}
        for i, kwargs in bad.items():
            with pytest.raises(mawex.Rejected) as info:
                await client.submit(GROUP, **kwargs)  # type: ignore[arg-type]
            alone[i] = info.value
        assert [type(e) for e in alone.values()] == [mawex.Rejected, mawex.TooLarge, mawex.Rejected]

        # the same bad tasks among many good ones, all waiting together
        calls = [
            client.submit(GROUP, **bad[i]) if i in bad else client.submit(GROUP, i, id=f"ok{i}")  # type: ignore[arg-type]
            for i in range(300)
        ]
        outcomes = await asyncio.gather(*calls, return_exceptions=True)

    errors = {i: o for i, o in enumerate(outcomes) if isinstance(o, BaseException)}
    assert sorted(errors) == sorted(bad)
    for i, error in errors.items():
        assert type(error) is type(alone[i])
        assert str(error) == str(alone[i])
    assert accepted_ids(master) == [f"ok{i}" for i in range(300) if i not in bad]  # call order


async def test_duplicates_in_one_batch_and_across_batches(master: LocalMaster) -> None:
    transport = CountingTransport()
    async with master.client(transport=transport) as client:
        alone = await client.submit(GROUP, 0, id="old")
        one_batch = await asyncio.gather(
            client.submit(GROUP, 1, id="new"),
            client.submit(GROUP, 2, id="new"),  # the same id in the same batch
            client.submit(GROUP, 3),  # a generated id
        )
        across = await asyncio.gather(
            client.submit(GROUP, 4, id="old"),  # known from an earlier request
            client.submit(GROUP, 5),
            client.submit(GROUP, 6, id="new"),
        )
        # only some of the chosen ids known: the master names which
        mixed = await asyncio.gather(client.submit(GROUP, id="old"), client.submit(GROUP, id="x"))
    assert transport.paths == ["/v1/tasks"] + ["/v1/tasks/batch"] * 3
    assert not alone.duplicate
    assert [r.duplicate for r in one_batch] == [False, True, False]
    assert [r.duplicate for r in across] == [True, False, True]
    assert [r.duplicate for r in mixed] == [True, False]
    assert master.engine.state.tasks[GROUP, "new"].payload == b"1"  # the first one won
    assert master.engine.state.tasks[GROUP, "old"].payload == b"0"
    assert ("g", "x") in master.engine.state.tasks


async def test_cancelled_callers_do_not_disturb_the_others(master: LocalMaster) -> None:
    async with master.client() as client:
        tasks = [asyncio.create_task(client.submit(GROUP, i, id=f"t{i}")) for i in range(200)]
        await asyncio.sleep(0)  # the first call is in flight, the others wait
        for task in tasks[100:150]:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        late = await client.submit(GROUP, id="late")
    assert all(isinstance(r, asyncio.CancelledError) for r in results[100:150])
    assert all(isinstance(r, mawex.SubmitReceipt) for r in results[:100] + results[150:])
    assert not late.duplicate
    expected = [f"t{i}" for i in range(200) if not 100 <= i < 150] + ["late"]
    assert accepted_ids(master) == expected  # cancelled while waiting: never sent


async def test_closing_the_client_fails_waiting_callers() -> None:
    async with LocalMaster(MemoryJournal()) as master:
        client = master.client()
        tasks = [asyncio.create_task(client.submit(GROUP, i)) for i in range(50)]
        await asyncio.sleep(0)
        await client.aclose()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, (mawex.SubmitReceipt, mawex.MawexError)) for r in results)
    assert any(isinstance(r, mawex.MawexError) for r in results)


async def test_failover_mid_stream_loses_and_repeats_nothing(tmp_path: Path) -> None:
    journal = f"sqlite:///{tmp_path / 'j.db'}?synchronous=normal"
    first = LocalMaster(journal, lease_ttl=1.0)
    await first.start()
    second = LocalMaster(journal, lease_ttl=1.0, wait_leader=False)
    await second.start()
    count = 3000
    receipts: list[mawex.SubmitReceipt] = []
    running = [first, second]
    try:
        async with mawex.AsyncClient([first.url, second.url], failover_timeout=30) as client:

            async def caller(worker: int) -> None:
                for i in range(worker, count, 300):
                    receipts.append(await client.submit(GROUP, i, id=f"t{i:05}"))

            callers = asyncio.gather(*(caller(w) for w in range(300)))
            while len(receipts) < count // 3:
                await asyncio.sleep(0.001)
            running.remove(first)
            await first.stop()  # hands the lease over; its in-flight requests may be cut
            # mid-stream: the rest went to the second master (its graceful shutdown may
            # last until they all have, so the receipts cannot tell)
            assert len(accepted_ids(first)) < count
            await callers
        assert second.engine.is_leader
        ids = sorted(r.id for r in receipts)
        assert ids == [f"t{i:05}" for i in range(count)]
        await second.engine.catch_up()
        assert sorted(accepted_ids(second)) == ids
        assert second.engine.state.pending_count(GROUP) == count
        # a call is a duplicate only when an earlier try of its own batch got through
        assert sum(r.duplicate for r in receipts) < count // 2
    finally:
        for local in running:
            await local.stop()


class CountingSyncTransport(httpx.BaseTransport):
    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.paths: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


async def test_threads_sharing_a_sync_client_share_requests(master: LocalMaster) -> None:
    transport = CountingSyncTransport()
    threads, each = 40, 25

    def submit_in_threads() -> list[list[mawex.SubmitReceipt | Exception]]:
        with mawex.Client(master.url, transport=transport) as client:
            start = threading.Barrier(threads)

            def run(t: int) -> list[mawex.SubmitReceipt | Exception]:
                start.wait()
                outcomes: list[mawex.SubmitReceipt | Exception] = []
                for i in range(each):
                    try:
                        attempts = 10_000 if (t, i) == (7, 3) else 1
                        outcomes.append(
                            client.submit(GROUP, i, id=f"t{t}-{i}", max_attempts=attempts)
                        )
                    except mawex.MawexError as exc:
                        outcomes.append(exc)
                return outcomes

            with ThreadPoolExecutor(threads) as pool:
                return list(pool.map(run, range(threads)))

    outcomes = await asyncio.to_thread(submit_in_threads)
    flat = [o for per_thread in outcomes for o in per_thread]
    assert len(flat) == threads * each
    errors = [o for o in flat if isinstance(o, Exception)]
    assert len(errors) == 1 and isinstance(errors[0], mawex.Rejected)
    assert "max_attempts" in str(errors[0])
    assert isinstance(outcomes[7][3], mawex.Rejected)
    assert len(transport.paths) < threads * each / 3  # a single client would need 1000
    accepted = accepted_ids(master)
    assert len(accepted) == threads * each - 1
    for t in range(threads):  # each thread's tasks in its call order
        mine = [id for id in accepted if id.startswith(f"t{t}-")]
        assert mine == [f"t{t}-{i}" for i in range(each) if (t, i) != (7, 3)]
