"""An in-process journal with real fencing, for tests and :class:`mawex.LocalMaster`.

It only stores records: every task rule lives in :mod:`mawex.core`.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import replace

from mawex.errors import FencedOut, JournalError
from mawex.journal.base import Lease, Member, Record, Snapshot


class MemoryJournal:
    """A journal kept in memory; ``clock`` defaults to :func:`time.time`."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._records: list[Record] = []
        self._snapshot: Snapshot | None = None
        self._lease: Lease | None = None
        self._epoch = 0
        self._members: dict[str, Member] = {}
        self._lock = asyncio.Lock()
        self._closed = False

    async def open(self) -> None:
        self._closed = False

    async def close(self) -> None:
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise JournalError("journal is closed")

    def _fence(self, epoch: int) -> None:
        if epoch != self._epoch:
            raise FencedOut(f"epoch {epoch} is fenced out by epoch {self._epoch}")

    def _last(self) -> int:
        newest = self._records[-1].offset if self._records else 0
        return max(newest, self._snapshot.offset if self._snapshot else 0)

    async def append(self, records: Sequence[Record], epoch: int) -> None:
        async with self._lock:
            self._check_open()
            self._fence(epoch)
            if not records:
                return
            expected = self._last() + 1
            for i, record in enumerate(records):
                if record.offset != expected + i:
                    raise JournalError(
                        f"offset {record.offset} is not the next offset {expected + i}"
                    )
            self._records.extend(replace(r, epoch=epoch) for r in records)

    async def read(self, from_offset: int, limit: int) -> list[Record]:
        self._check_open()
        offsets = [r.offset for r in self._records]
        start = bisect_left(offsets, from_offset)
        return self._records[start : start + limit]

    async def read_topic(self, from_topic: int, limit: int) -> list[Record]:
        self._check_open()
        out: list[Record] = []
        if limit <= 0:
            return out
        for record in self._records:
            if record.topic is not None and record.topic >= from_topic:
                out.append(record)
                if len(out) >= limit:
                    break
        return out

    async def last_offset(self) -> int:
        self._check_open()
        return self._last()

    async def save_snapshot(self, snapshot: Snapshot, epoch: int) -> None:
        async with self._lock:
            self._check_open()
            self._fence(epoch)
            if snapshot.offset > self._last():
                raise JournalError("snapshot offset is beyond the last record")
            self._snapshot = snapshot

    async def load_snapshot(self) -> Snapshot | None:
        self._check_open()
        return self._snapshot

    async def trim(self, before_offset: int, keep_topic_from: int, epoch: int) -> int:
        async with self._lock:
            self._check_open()
            self._fence(epoch)
            limit = (self._snapshot.offset + 1) if self._snapshot else 1
            before_offset = min(before_offset, limit)
            kept = [
                r
                for r in self._records
                if r.offset >= before_offset or (r.topic is not None and r.topic >= keep_topic_from)
            ]
            removed = len(self._records) - len(kept)
            self._records = kept
            return removed

    async def acquire(self, holder: str, ttl: float, url: str | None) -> Lease | None:
        async with self._lock:
            self._check_open()
            now = self._clock()
            lease = self._lease
            if lease is not None and lease.holder != holder and lease.expires_at > now:
                return None
            self._epoch += 1
            self._lease = Lease(holder, self._epoch, now + ttl, url)
            return self._lease

    async def renew(self, lease: Lease, ttl: float) -> Lease:
        async with self._lock:
            self._check_open()
            current = self._lease
            if current is None or current.epoch != lease.epoch or current.holder != lease.holder:
                raise FencedOut("the lease was lost")
            self._lease = Lease(lease.holder, lease.epoch, self._clock() + ttl, lease.url)
            return self._lease

    async def release(self, lease: Lease) -> None:
        async with self._lock:
            current = self._lease
            if current is not None and current.epoch == lease.epoch:
                self._lease = Lease(current.holder, current.epoch, 0.0, current.url)

    async def current_lease(self) -> Lease | None:
        return self._lease

    async def announce(self, member: Member, ttl: float) -> None:
        self._check_open()
        now = self._clock()
        if ttl <= 0:
            self._members.pop(member.holder, None)
        else:
            self._members[member.holder] = Member(
                member.holder, member.url, member.role, now, now + ttl
            )
        for holder in [h for h, m in self._members.items() if m.expires_at <= now]:
            del self._members[holder]

    async def members(self) -> list[Member]:
        self._check_open()
        now = self._clock()
        return [
            replace(m, seen_s_ago=now - m.seen_at)
            for _, m in sorted(self._members.items())
            if m.expires_at > now
        ]
