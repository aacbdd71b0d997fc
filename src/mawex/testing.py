"""Test helpers for mawex and for people who write their own journal backends.

:func:`check_journal` is the conformance suite every :class:`~mawex.journal.base.Journal`
must pass (in the spirit of trio's ``check_two_way_stream``); each of its checks
is also available alone in :data:`CHECKS`, so a test suite can run them as
separate tests::

    async def make_journal(namespace: str) -> Journal:
        journal = open_journal("sqlite:////tmp/j.db", namespace=namespace)
        await journal.open()
        return journal

    await check_journal(make_journal)

The factory takes a namespace and returns a new, opened handle on the same store
at every call: handles with the same namespace share data, handles with
different namespaces must be isolated. Every check works in namespaces of its
own (random names), so the checks can share one store; each check closes the
handles it opened. The lease checks wait for short leases (0.3 s) to lapse, so
the whole suite takes a few seconds.

The checks raise :class:`AssertionError` with a message saying what broke; they
do not depend on pytest.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import replace
from types import TracebackType
from typing import Final, TypeVar

from mawex.errors import FencedOut, JournalError
from mawex.journal.base import LEADER, STANDBY, Journal, Lease, Member, Record, Snapshot

_E = TypeVar("_E", bound=BaseException)

#: ``await make_journal(namespace)`` returns a new opened handle on the shared store.
JournalFactory = Callable[[str], Awaitable[Journal]]
JournalCheck = Callable[[JournalFactory], Awaitable[None]]

#: The lease time of the checks that wait for a lease to lapse, and how long they wait.
SHORT_TTL: Final = 0.3
LAPSE_WAIT: Final = 0.7
LONG_TTL: Final = 30.0


class FakeClock:
    """A settable clock: ``clock()`` returns ``clock.now``; :meth:`advance` moves it."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        """Move the clock ``seconds`` forward and return the new time."""
        self.now += seconds
        return self.now

    def __repr__(self) -> str:
        return f"FakeClock({self.now!r})"


# -- helpers --------------------------------------------------------------------


def _fail(message: str) -> AssertionError:
    return AssertionError(message)


def _check(condition: object, message: str) -> None:
    if not condition:
        raise _fail(message)


def _equal(actual: object, expected: object, what: str) -> None:
    if actual != expected:
        raise _fail(f"{what}: expected {expected!r}, got {actual!r}")


async def _raises(exc_type: type[_E], awaitable: Awaitable[object], what: str) -> _E:
    try:
        result = await awaitable
    except exc_type as e:
        return e
    except BaseException as e:
        raise _fail(f"{what}: expected {exc_type.__name__}, got {e!r}") from e
    raise _fail(f"{what}: expected {exc_type.__name__}, but it returned {result!r}")


async def _rejected(awaitable: Awaitable[object], what: str) -> None:
    """Expect a JournalError that is not a FencedOut."""
    e = await _raises(JournalError, awaitable, what)
    if isinstance(e, FencedOut):
        raise _fail(f"{what}: expected a JournalError other than FencedOut, got {e!r}") from e


def _ns(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:12]}"


def _rec(offset: int, topic: int | None = None, body: bytes | None = None) -> Record:
    return Record(
        offset=offset,
        topic=topic,
        at=1_700_000_000.25 + offset,
        body=f"record {offset}".encode() if body is None else body,
    )


def _recs(first: int, last: int, topics: dict[int, int] | None = None) -> list[Record]:
    topics = topics or {}
    return [_rec(o, topics.get(o)) for o in range(first, last + 1)]


def _offsets(records: Sequence[Record]) -> list[int]:
    return [r.offset for r in records]


def _stamp(records: Sequence[Record], epoch: int) -> list[Record]:
    """``records`` as a journal returns them once appended with ``epoch``."""
    return [replace(r, epoch=epoch) for r in records]


def _same_lease(actual: Lease | None, expected: Lease, what: str) -> None:
    if actual is None:
        raise _fail(f"{what}: expected {expected!r}, got None")
    _equal(
        (actual.holder, actual.epoch, actual.url),
        (expected.holder, expected.epoch, expected.url),
        f"{what} (holder, epoch, url)",
    )
    _check(
        abs(actual.expires_at - expected.expires_at) < 0.05,
        f"{what}: expires_at {actual.expires_at} differs from {expected.expires_at}",
    )


class _Handles:
    """Opens handles through the factory and closes them all at exit."""

    def __init__(self, make_journal: JournalFactory) -> None:
        self._make = make_journal
        self._stack = AsyncExitStack()

    async def __call__(self, namespace: str) -> Journal:
        journal = await self._make(namespace)
        self._stack.push_async_callback(journal.close)
        return journal

    async def __aenter__(self) -> _Handles:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()


async def _lead(journal: Journal, holder: str = "leader", ttl: float = LONG_TTL) -> Lease:
    lease = await journal.acquire(holder, ttl, f"http://{holder}")
    _check(lease is not None, f"acquire({holder!r}) on a free lease returned None")
    assert lease is not None
    return lease


async def _take_over(journal: Journal, holder: str, ttl: float = LONG_TTL) -> Lease:
    """Acquire once the current (short) lease has lapsed."""
    await asyncio.sleep(LAPSE_WAIT)
    lease = await journal.acquire(holder, ttl, None)
    _check(lease is not None, f"acquire({holder!r}) of a lapsed lease returned None")
    assert lease is not None
    return lease


# -- the checks ----------------------------------------------------------------


async def check_append_and_read(make_journal: JournalFactory) -> None:
    """Appended records read back whole and in order; an empty journal reads empty."""
    async with _Handles(make_journal) as open_:
        j = await open_(_ns("append"))
        _equal(await j.last_offset(), 0, "last_offset() of an empty journal")
        _equal(await j.read(1, 10), [], "read() of an empty journal")
        _equal(await j.read_topic(1, 10), [], "read_topic() of an empty journal")
        _equal(await j.load_snapshot(), None, "load_snapshot() of an empty journal")
        _equal(await j.current_lease(), None, "current_lease() of a never-leased journal")
        lease = await _lead(j)
        records = [
            _rec(1),
            _rec(2, topic=1, body=b""),
            _rec(3, body=bytes(range(256)) * 4),
            Record(4, 2, 1_712_345_678.123456, b"\x00\xff" * (128 * 1024)),
        ]
        await j.append(records[:3], lease.epoch)
        await j.append([], lease.epoch)
        await j.append(records[3:], lease.epoch)
        _equal(await j.last_offset(), 4, "last_offset() after appending 1-4")
        records = _stamp(records, lease.epoch)
        _equal(await j.read(1, 100), records, "read(1) after appending 1-4")
        _equal(await j.read(0, 100), records, "read(0)")
        _equal(await j.read(3, 100), records[2:], "read(3)")
        _equal(await j.read(5, 100), [], "read() past the end")
        for record in await j.read(1, 100):
            _check(type(record.body) is bytes, f"body of {record.offset} is not bytes")


async def check_offsets_contiguous(make_journal: JournalFactory) -> None:
    """Appends must start at last_offset() + 1 and be contiguous; a bad batch writes nothing."""
    async with _Handles(make_journal) as open_:
        j = await open_(_ns("offsets"))
        lease = await _lead(j)
        await _rejected(j.append([_rec(2)], lease.epoch), "first append starting at 2")
        await _rejected(j.append([_rec(0)], lease.epoch), "first append starting at 0")
        _equal(await j.last_offset(), 0, "last_offset() after rejected appends")
        await j.append(_recs(1, 3), lease.epoch)
        bad_batches = {
            "an overlapping batch [3, 4]": _recs(3, 4),
            "a repeated batch [1, 2, 3]": _recs(1, 3),
            "a batch after a gap [5]": _recs(5, 5),
            "a batch with a gap [4, 6]": [_rec(4), _rec(6)],
            "a batch with a repeat [4, 5, 5]": [_rec(4), _rec(5), _rec(5)],
            "a batch out of order [5, 4]": [_rec(5), _rec(4)],
        }
        for what, batch in bad_batches.items():
            await _rejected(j.append(batch, lease.epoch), f"appending {what}")
            _equal(_offsets(await j.read(1, 100)), [1, 2, 3], f"records after {what}")
            _equal(await j.last_offset(), 3, f"last_offset() after {what}")
        await j.append(_recs(4, 5), lease.epoch)
        _equal(
            await j.read(1, 100), _stamp(_recs(1, 5), lease.epoch), "records after a good append"
        )


async def check_read_limits(make_journal: JournalFactory) -> None:
    """read() and read_topic() return at most ``limit`` records."""
    async with _Handles(make_journal) as open_:
        j = await open_(_ns("limits"))
        lease = await _lead(j)
        topics = {o: o for o in range(1, 11)}
        records = _recs(1, 10, topics)
        await j.append(records, lease.epoch)
        records = _stamp(records, lease.epoch)
        _equal(await j.read(1, 3), records[:3], "read(1, limit=3)")
        _equal(await j.read(4, 3), records[3:6], "read(4, limit=3)")
        _equal(await j.read(9, 5), records[8:], "read(9, limit=5)")
        _equal(await j.read(1, 1), records[:1], "read(1, limit=1)")
        _equal(await j.read(1, 0), [], "read(1, limit=0)")
        _equal(await j.read_topic(1, 4), records[:4], "read_topic(1, limit=4)")
        _equal(await j.read_topic(8, 4), records[7:], "read_topic(8, limit=4)")
        _equal(await j.read_topic(1, 0), [], "read_topic(1, limit=0)")


async def check_read_topic(make_journal: JournalFactory) -> None:
    """read_topic() returns only topic records, addressed and ordered by topic offset."""
    async with _Handles(make_journal) as open_:
        j = await open_(_ns("topic"))
        lease = await _lead(j)
        topics = {2: 1, 3: 2, 5: 3, 8: 4}
        records = _recs(1, 9, topics)
        await j.append(records[:4], lease.epoch)
        await j.append(records[4:], lease.epoch)
        in_topic = [r for r in _stamp(records, lease.epoch) if r.topic is not None]
        _equal(await j.read_topic(1, 100), in_topic, "read_topic(1)")
        _equal(await j.read_topic(0, 100), in_topic, "read_topic(0)")
        _equal(await j.read_topic(3, 100), in_topic[2:], "read_topic(3)")
        _equal(await j.read_topic(2, 1), in_topic[1:2], "read_topic(2, limit=1)")
        _equal(await j.read_topic(5, 100), [], "read_topic() past the end")


async def check_last_offset(make_journal: JournalFactory) -> None:
    """last_offset() is the newest record or the snapshot, whichever is newer, also after trim."""
    async with _Handles(make_journal) as open_:
        j = await open_(_ns("last"))
        lease = await _lead(j)
        await j.append(_recs(1, 5), lease.epoch)
        await j.save_snapshot(Snapshot(5, b"state@5"), lease.epoch)
        _equal(await j.trim(6, 1, lease.epoch), 5, "trim() of every record up to the snapshot")
        _equal(await j.read(1, 100), [], "records after trimming them all")
        _equal(await j.last_offset(), 5, "last_offset() with only a snapshot left")
        await _rejected(j.append([_rec(5)], lease.epoch), "append at the snapshot offset")
        await j.append(_recs(6, 8, {7: 1}), lease.epoch)
        _equal(await j.last_offset(), 8, "last_offset() after appending past the snapshot")
        await j.save_snapshot(Snapshot(8, b"state@8"), lease.epoch)
        _equal(await j.trim(9, 1, lease.epoch), 2, "trim() keeping topic record 7")
        _equal(_offsets(await j.read(1, 100)), [7], "records left after the trim")
        _equal(
            await j.last_offset(), 8, "last_offset() with a kept topic record below the snapshot"
        )
        await j.append(_recs(9, 9), lease.epoch)
        _equal(await j.last_offset(), 9, "last_offset() after appending 9")


async def check_snapshots(make_journal: JournalFactory) -> None:
    """A saved snapshot loads back; a newer one replaces it; one past the end is refused."""
    async with _Handles(make_journal) as open_:
        j = await open_(_ns("snapshot"))
        lease = await _lead(j)
        await _rejected(j.save_snapshot(Snapshot(1, b"s"), lease.epoch), "snapshot past the end")
        _equal(await j.load_snapshot(), None, "load_snapshot() after a refused snapshot")
        await j.append(_recs(1, 4), lease.epoch)
        await j.save_snapshot(Snapshot(2, b"state@2"), lease.epoch)
        _equal(await j.load_snapshot(), Snapshot(2, b"state@2"), "load_snapshot()")
        big = bytes(range(256)) * (8 * 1024)
        await j.save_snapshot(Snapshot(4, big), lease.epoch)
        _equal(await j.load_snapshot(), Snapshot(4, big), "load_snapshot() after a newer one")
        await _rejected(j.save_snapshot(Snapshot(5, b"s"), lease.epoch), "snapshot past the end")
        _equal(await j.load_snapshot(), Snapshot(4, big), "snapshot after a refused one")
        _equal(
            await j.read(1, 100), _stamp(_recs(1, 4), lease.epoch), "records after saving snapshots"
        )


async def check_trim(make_journal: JournalFactory) -> None:
    """trim() keeps topic records at or after keep_topic_from and never passes the snapshot."""
    async with _Handles(make_journal) as open_:
        j = await open_(_ns("trim"))
        lease = await _lead(j)
        topics = {2: 1, 4: 2, 6: 3, 8: 4, 10: 5}
        records = _recs(1, 10, topics)
        await j.append(records, lease.epoch)
        records = _stamp(records, lease.epoch)
        _equal(await j.trim(100, 100, lease.epoch), 0, "trim() without a snapshot")
        _equal(await j.read(1, 100), records, "records after trim() without a snapshot")
        await j.save_snapshot(Snapshot(6, b"state@6"), lease.epoch)
        _equal(await j.trim(100, 2, lease.epoch), 4, "trim(100, keep_topic_from=2)")
        left = [r for r in records if r.offset > 6 or r.offset in (4, 6)]
        _equal(await j.read(1, 100), left, "records after trim(100, keep_topic_from=2)")
        _equal(
            await j.read_topic(1, 100),
            [r for r in left if r.topic is not None],
            "topic records after trim(100, keep_topic_from=2)",
        )
        _equal(await j.trim(100, 2, lease.epoch), 0, "the same trim() again")
        _equal(await j.trim(5, 3, lease.epoch), 1, "trim(5, keep_topic_from=3)")
        _equal(_offsets(await j.read(1, 100)), [6, 7, 8, 9, 10], "records after trim(5)")
        _equal(await j.trim(7, 100, lease.epoch), 1, "trim(7, keep_topic_from=100)")
        _equal(await j.read(1, 100), records[6:], "records after trimming up to the snapshot")
        _equal(await j.last_offset(), 10, "last_offset() after trimming")


async def check_acquire_epochs(make_journal: JournalFactory) -> None:
    """Every acquire() hands out an epoch greater than every earlier one, on every handle."""
    async with _Handles(make_journal) as open_:
        ns = _ns("epochs")
        a, b = await open_(ns), await open_(ns)
        first = await _lead(a, "a")
        _check(first.epoch >= 1, f"the first epoch is {first.epoch}, not >= 1")
        _equal((first.holder, first.url), ("a", "http://a"), "the lease's holder and url")
        _same_lease(await b.current_lease(), first, "current_lease() seen by another handle")
        epochs = [first.epoch]
        again = await _lead(a, "a")
        epochs.append(again.epoch)
        await a.release(again)
        taken = await _lead(b, "b")
        epochs.append(taken.epoch)
        await b.release(taken)
        epochs.append((await _lead(a, "a")).epoch)
        _check(
            all(x < y for x, y in itertools.pairwise(epochs)),
            f"epochs are not strictly increasing: {epochs}",
        )


async def check_live_lease_blocks(make_journal: JournalFactory) -> None:
    """While a lease is live, another holder cannot acquire it."""
    async with _Handles(make_journal) as open_:
        ns = _ns("live")
        a, b = await open_(ns), await open_(ns)
        lease = await _lead(a, "a")
        for _ in range(3):
            _equal(await b.acquire("b", LONG_TTL, None), None, "acquire() of a live lease")
        _same_lease(await b.current_lease(), lease, "the lease after refused acquires")
        await a.append([_rec(1)], lease.epoch)
        _equal(await b.read(1, 10), _stamp([_rec(1)], lease.epoch), "the holder's append")


async def check_lapsed_lease(make_journal: JournalFactory) -> None:
    """Once a lease lapses another holder takes it, with a newer epoch."""
    async with _Handles(make_journal) as open_:
        ns = _ns("lapse")
        a, b = await open_(ns), await open_(ns)
        old = await _lead(a, "a", SHORT_TTL)
        new = await _take_over(b, "b")
        _check(new.epoch > old.epoch, f"takeover epoch {new.epoch} is not > {old.epoch}")
        _same_lease(await a.current_lease(), new, "current_lease() after a takeover")


async def check_renew(make_journal: JournalFactory) -> None:
    """renew() extends a held lease and raises FencedOut once the lease was taken over."""
    async with _Handles(make_journal) as open_:
        ns = _ns("renew")
        a, b = await open_(ns), await open_(ns)
        lease = await _lead(a, "a", SHORT_TTL)
        renewed = await a.renew(lease, LONG_TTL)
        _equal(
            (renewed.holder, renewed.epoch, renewed.url),
            (lease.holder, lease.epoch, lease.url),
            "renew() (holder, epoch, url)",
        )
        _check(
            renewed.expires_at > lease.expires_at + 1,
            f"renew() did not extend: {renewed.expires_at} vs {lease.expires_at}",
        )
        await asyncio.sleep(LAPSE_WAIT)
        _equal(await b.acquire("b", LONG_TTL, None), None, "acquire() of a renewed lease")
        _same_lease(await b.current_lease(), renewed, "current_lease() after renew()")
        short = await a.renew(renewed, SHORT_TTL)
        taken = await _take_over(b, "b")
        await _raises(FencedOut, a.renew(short, LONG_TTL), "renew() after a takeover")
        _same_lease(await a.current_lease(), taken, "the new holder's lease after a stale renew")


async def check_release(make_journal: JournalFactory) -> None:
    """release() frees the lease at once, keeps its epoch, and a stale release does nothing."""
    async with _Handles(make_journal) as open_:
        ns = _ns("release")
        a, b = await open_(ns), await open_(ns)
        lease = await _lead(a, "a")
        await a.release(lease)
        released = await b.current_lease()
        _check(
            released is not None and released.epoch == lease.epoch,
            f"current_lease() after release() is {released!r}, expected epoch {lease.epoch}",
        )
        taken = await _lead(b, "b")
        _check(taken.epoch > lease.epoch, f"epoch after release {taken.epoch} <= {lease.epoch}")
        await a.release(lease)
        _same_lease(await a.current_lease(), taken, "the new lease after a stale release()")
        _equal(await a.acquire("a", LONG_TTL, None), None, "acquire() after a stale release()")
        await b.renew(taken, LONG_TTL)


async def check_stale_epoch_fenced(make_journal: JournalFactory) -> None:
    """append, save_snapshot and trim with a stale epoch raise FencedOut and write nothing."""
    async with _Handles(make_journal) as open_:
        ns = _ns("fence")
        a, b = await open_(ns), await open_(ns)
        old = await _lead(a, "a", SHORT_TTL)
        await a.append(_recs(1, 3, {2: 1}), old.epoch)
        await a.save_snapshot(Snapshot(2, b"state@2"), old.epoch)
        new = await _take_over(b, "b")
        await _raises(FencedOut, a.append([_rec(4)], old.epoch), "append() with a stale epoch")
        await _raises(FencedOut, a.append([], old.epoch), "empty append() with a stale epoch")
        await _raises(
            FencedOut, a.save_snapshot(Snapshot(3, b"x"), old.epoch), "stale save_snapshot()"
        )
        await _raises(FencedOut, a.trim(3, 100, old.epoch), "trim() with a stale epoch")
        before = _stamp(_recs(1, 3, {2: 1}), old.epoch)
        for handle in (a, b):
            _equal(await handle.read(1, 100), before, "records after stale writes")
            _equal(await handle.last_offset(), 3, "last_offset() after stale writes")
            _equal(await handle.load_snapshot(), Snapshot(2, b"state@2"), "snapshot after them")
        await b.append([_rec(4)], new.epoch)
        _equal(await a.read(4, 10), _stamp([_rec(4)], new.epoch), "the new leader's append")


async def check_concurrent_writers(make_journal: JournalFactory) -> None:
    """A writer keeps appending while another takes the lease over: only the newest writes.

    Every append the old writer saw succeed is in the journal, none after the new
    writer's first, and the old writer is fenced out from the takeover on.
    """
    async with _Handles(make_journal) as open_:
        ns = _ns("writers")
        a, b = await open_(ns), await open_(ns)
        old = await _lead(a, "a", SHORT_TTL)
        acked: list[int] = []
        fenced: list[FencedOut] = []

        async def old_writer() -> None:
            offset = 1
            deadline = asyncio.get_running_loop().time() + 10
            while asyncio.get_running_loop().time() < deadline:
                try:
                    await a.append([_rec(offset, body=b"A")], old.epoch)
                except FencedOut as e:
                    fenced.append(e)
                    return
                acked.append(offset)
                offset += 1
                await asyncio.sleep(0.005)

        async def new_writer() -> Lease:
            new = await _take_over(b, "b")
            start = await b.last_offset() + 1
            for offset in range(start, start + 20, 4):
                await b.append([_rec(o, body=b"B") for o in range(offset, offset + 4)], new.epoch)
            return new

        _, new = await asyncio.gather(old_writer(), new_writer())
        _check(fenced, "the old writer was never fenced out")
        _check(new.epoch > old.epoch, "the takeover did not raise the epoch")
        records = await a.read(1, 1000)
        bodies = [r.body for r in records]
        _equal(_offsets(records), list(range(1, len(records) + 1)), "offsets after the race")
        _equal(bodies, [b"A"] * len(acked) + [b"B"] * 20, "who wrote what, in order")
        _equal(
            [r.epoch for r in records],
            [old.epoch] * len(acked) + [new.epoch] * 20,
            "the epoch of every record after the race",
        )
        _check(acked, "the old writer never appended before the takeover")
        await _raises(FencedOut, a.append([_rec(len(records) + 1)], old.epoch), "late old append")
        _equal(await b.last_offset(), len(records), "last_offset() after a late old append")


async def check_namespaces_isolated(make_journal: JournalFactory) -> None:
    """Namespaces share nothing: records, snapshots, leases and epochs are separate."""
    async with _Handles(make_journal) as open_:
        one, two = await open_(_ns("ns1")), await open_(_ns("ns2"))
        lease1 = await _lead(one, "one")
        await one.append(_recs(1, 3, {1: 1}), lease1.epoch)
        await one.save_snapshot(Snapshot(3, b"one@3"), lease1.epoch)
        _equal(await two.last_offset(), 0, "last_offset() of another namespace")
        _equal(await two.read(1, 10), [], "read() of another namespace")
        _equal(await two.read_topic(1, 10), [], "read_topic() of another namespace")
        _equal(await two.load_snapshot(), None, "load_snapshot() of another namespace")
        _equal(await two.current_lease(), None, "current_lease() of another namespace")
        lease2 = await _lead(two, "two")
        await two.append([_rec(1, body=b"two")], lease2.epoch)
        await one.append([_rec(4)], lease1.epoch)
        _equal(await two.trim(100, 100, lease2.epoch), 0, "trim() without a snapshot")
        _equal(
            await one.read(1, 10),
            _stamp(_recs(1, 4, {1: 1}), lease1.epoch),
            "records of the first namespace",
        )
        _equal(
            await two.read(1, 10),
            _stamp([_rec(1, body=b"two")], lease2.epoch),
            "records of the second",
        )
        _same_lease(await one.current_lease(), lease1, "lease of the first namespace")
        _same_lease(await two.current_lease(), lease2, "lease of the second namespace")


async def check_close_reopen(make_journal: JournalFactory) -> None:
    """Data, snapshot and lease survive close(); a closed handle refuses work."""
    async with _Handles(make_journal) as open_:
        ns = _ns("reopen")
        a = await open_(ns)
        lease = await _lead(a, "a")
        records = _recs(1, 4, {3: 1})
        await a.append(records, lease.epoch)
        records = _stamp(records, lease.epoch)
        await a.save_snapshot(Snapshot(2, b"state@2"), lease.epoch)
        await a.close()
        await a.close()
        await _raises(JournalError, a.read(1, 10), "read() on a closed handle")
        await _raises(JournalError, a.append([_rec(5)], lease.epoch), "append() when closed")
        b = await open_(ns)
        _equal(await b.read(1, 10), records, "records after reopening")
        _equal(await b.read_topic(1, 10), records[2:3], "topic records after reopening")
        _equal(await b.last_offset(), 4, "last_offset() after reopening")
        _equal(await b.load_snapshot(), Snapshot(2, b"state@2"), "snapshot after reopening")
        _same_lease(await b.current_lease(), lease, "lease after reopening")
        await b.append([_rec(5)], lease.epoch)
        _equal(_offsets(await b.read(1, 10)), [1, 2, 3, 4, 5], "append after reopening")


async def check_record_epochs(make_journal: JournalFactory) -> None:
    """Every record reads back with the epoch it was appended with (not the one it
    carried), epochs never decrease along offsets across takeovers, and they
    survive snapshots, trims and reopening."""
    async with _Handles(make_journal) as open_:
        ns = _ns("epochs")
        a, b = await open_(ns), await open_(ns)
        first = await _lead(a, "a", SHORT_TTL)
        # the records' own epoch field is not what the journal stores
        await a.append(
            [replace(r, epoch=first.epoch + 100) for r in _recs(1, 3, {2: 1})], first.epoch
        )
        second = await _take_over(b, "b", SHORT_TTL)
        await _raises(FencedOut, a.append([_rec(4)], first.epoch), "append() with a stale epoch")
        await b.append(_recs(4, 5, {5: 2}), second.epoch)
        await b.append(_recs(6, 6), second.epoch)
        third = await _take_over(a, "a")
        await a.append(_recs(7, 8, {8: 3}), third.epoch)
        _check(
            first.epoch < second.epoch < third.epoch,
            f"takeover epochs do not increase: {first.epoch}, {second.epoch}, {third.epoch}",
        )
        expected = [
            *_stamp(_recs(1, 3, {2: 1}), first.epoch),
            *_stamp(_recs(4, 6, {5: 2}), second.epoch),
            *_stamp(_recs(7, 8, {8: 3}), third.epoch),
        ]
        for handle in (a, b):
            records = await handle.read(1, 100)
            _equal(records, expected, "records with their writers' epochs")
            epochs = [r.epoch for r in records]
            _check(
                all(x <= y for x, y in itertools.pairwise(epochs)),
                f"epochs decrease along offsets: {epochs}",
            )
            _equal(
                await handle.read_topic(1, 100),
                [r for r in expected if r.topic is not None],
                "topic records with their writers' epochs",
            )
        await a.save_snapshot(Snapshot(6, b"state@6"), third.epoch)
        await a.trim(7, 2, third.epoch)
        kept = [r for r in expected if r.offset > 6 or (r.topic is not None and r.topic >= 2)]
        _equal(await b.read(1, 100), kept, "records kept by trim() keep their epochs")
        await a.close()
        c = await open_(ns)
        _equal(await c.read(1, 100), kept, "epochs after reopening")


async def check_members(make_journal: JournalFactory) -> None:
    """announce() upserts a member until its TTL lapses (or ttl <= 0 withdraws it);
    members() lists live ones, ordered by holder, on every handle of the namespace."""
    async with _Handles(make_journal) as open_:
        ns = _ns("members")
        a, b, other = await open_(ns), await open_(ns), await open_(_ns("members-other"))
        _equal(await a.members(), [], "members() of a new namespace")
        await a.announce(Member("m-b", "http://b:1", STANDBY), LONG_TTL)
        await b.announce(Member("m-a", "http://a:1", LEADER, seen_at=1.0, expires_at=2.0), 20.0)
        await b.announce(Member("m-c", None, STANDBY), SHORT_TTL)
        seen = await a.members()
        _equal(
            [(m.holder, m.url, m.role) for m in seen],
            [("m-a", "http://a:1", LEADER), ("m-b", "http://b:1", STANDBY), ("m-c", None, STANDBY)],
            "members() (holder, url, role)",
        )
        for member, ttl in zip(seen, (20.0, LONG_TTL, SHORT_TTL), strict=True):
            _check(
                abs(member.expires_at - member.seen_at - ttl) < 0.05,
                f"{member.holder}: expires_at - seen_at is "
                f"{member.expires_at - member.seen_at:.3f}, expected the ttl {ttl}",
            )
            _check(
                0 <= member.seen_s_ago < 5,
                f"{member.holder}: seen_s_ago {member.seen_s_ago} is not in [0, 5)",
            )
        _equal(await other.members(), [], "members() of another namespace")
        # an upsert replaces the member's role and url, and refreshes it
        await asyncio.sleep(0.05)
        await a.announce(Member("m-b", "http://b:2", LEADER), LONG_TTL)
        again = {m.holder: m for m in await b.members()}
        _equal(sorted(again), ["m-a", "m-b", "m-c"], "holders after an upsert")
        _equal((again["m-b"].url, again["m-b"].role), ("http://b:2", LEADER), "upserted member")
        _check(
            again["m-b"].seen_at > seen[1].seen_at,
            f"the upsert did not move seen_at: {again['m-b'].seen_at} <= {seen[1].seen_at}",
        )
        # a short TTL lapses; ttl <= 0 withdraws at once; withdrawing twice is harmless
        await asyncio.sleep(LAPSE_WAIT)
        _equal([m.holder for m in await a.members()], ["m-a", "m-b"], "after m-c's TTL lapsed")
        await b.announce(Member("m-a", "http://a:1", LEADER), 0)
        await b.announce(Member("m-a", "http://a:1", LEADER), 0)
        await a.announce(Member("never", None, STANDBY), 0)
        _equal([m.holder for m in await b.members()], ["m-b"], "after m-a withdrew")


#: Every check by name, in the order :func:`check_journal` runs them.
CHECKS: Final[dict[str, JournalCheck]] = {
    "append_and_read": check_append_and_read,
    "offsets_contiguous": check_offsets_contiguous,
    "read_limits": check_read_limits,
    "read_topic": check_read_topic,
    "last_offset": check_last_offset,
    "snapshots": check_snapshots,
    "trim": check_trim,
    "acquire_epochs": check_acquire_epochs,
    "live_lease_blocks": check_live_lease_blocks,
    "lapsed_lease": check_lapsed_lease,
    "renew": check_renew,
    "release": check_release,
    "stale_epoch_fenced": check_stale_epoch_fenced,
    "concurrent_writers": check_concurrent_writers,
    "namespaces_isolated": check_namespaces_isolated,
    "close_reopen": check_close_reopen,
    "record_epochs": check_record_epochs,
    "members": check_members,
}


async def check_journal(make_journal: JournalFactory) -> None:
    """Run every check of :data:`CHECKS` against the store behind ``make_journal``."""
    for name, check in CHECKS.items():
        try:
            await check(make_journal)
        except AssertionError as e:
            raise AssertionError(f"journal check {name!r} failed: {e}") from e


__all__ = [
    "CHECKS",
    "FakeClock",
    "JournalCheck",
    "JournalFactory",
    "check_acquire_epochs",
    "check_append_and_read",
    "check_close_reopen",
    "check_concurrent_writers",
    "check_journal",
    "check_lapsed_lease",
    "check_last_offset",
    "check_live_lease_blocks",
    "check_members",
    "check_namespaces_isolated",
    "check_offsets_contiguous",
    "check_read_limits",
    "check_read_topic",
    "check_record_epochs",
    "check_release",
    "check_renew",
    "check_snapshots",
    "check_stale_epoch_fenced",
    "check_trim",
]
