"""The journal interface: an append-only, epoch-fenced event log with snapshots and a leader lease.

A journal stores opaque event bodies; it knows nothing of tasks. Every backend
must pass :func:`mawex.testing.check_journal`.

Offsets: journal offsets start at 1 and are contiguous; the master assigns them
(``last_offset() + 1`` onwards) and a backend rejects an append whose first
offset is not the next one. Records that belong to the result topic also carry
a topic offset (``topic``), contiguous among topic records.

Fencing: :meth:`Journal.acquire` hands out a lease with an epoch strictly greater
than every epoch handed out before. ``append``, ``save_snapshot`` and ``trim``
take the caller's epoch and fail with :class:`~mawex.errors.FencedOut`, changing
nothing, when a newer epoch exists, atomically with the write.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class Record:
    """One journal entry."""

    offset: int
    topic: int | None
    at: float
    body: bytes


@dataclass(frozen=True, slots=True)
class Lease:
    """The leader lease as the journal holds it."""

    holder: str
    epoch: int
    expires_at: float
    url: str | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A saved state: ``body`` is the state after applying every record up to ``offset``."""

    offset: int
    body: bytes


@runtime_checkable
class Journal(Protocol):
    """What a master needs from its store."""

    async def open(self) -> None:
        """Connect and create the schema if needed."""

    async def close(self) -> None:
        """Release connections; the journal may not be used afterwards."""

    async def append(self, records: Sequence[Record], epoch: int) -> None:
        """Append records atomically, in one transaction, if ``epoch`` is the newest epoch.

        Raises FencedOut if a newer epoch exists, JournalError if the first offset
        is not ``last_offset() + 1`` or the store fails. Nothing is written on error.
        """

    async def read(self, from_offset: int, limit: int) -> list[Record]:
        """Records with ``offset >= from_offset`` in order, at most ``limit``."""

    async def read_topic(self, from_topic: int, limit: int) -> list[Record]:
        """Topic records with ``topic >= from_topic`` in topic order, at most ``limit``."""

    async def last_offset(self) -> int:
        """The offset of the newest record, or the snapshot's offset, or 0."""

    async def save_snapshot(self, snapshot: Snapshot, epoch: int) -> None:
        """Store a snapshot (replacing older ones) if ``epoch`` is the newest epoch."""

    async def load_snapshot(self) -> Snapshot | None:
        """The newest snapshot, if any."""

    async def trim(self, before_offset: int, keep_topic_from: int, epoch: int) -> int:
        """Delete records below ``before_offset`` except topic records at or after
        ``keep_topic_from``; ``before_offset`` must not pass the newest snapshot.
        Returns how many records were deleted."""

    async def acquire(self, holder: str, ttl: float, url: str | None) -> Lease | None:
        """Take the lease if it is free, lapsed or already ``holder``'s, with a new epoch."""

    async def renew(self, lease: Lease, ttl: float) -> Lease:
        """Extend a held lease; FencedOut if it was lost to a newer epoch."""

    async def release(self, lease: Lease) -> None:
        """Give the lease up now (clean shutdown) if still held; the epoch stays."""

    async def current_lease(self) -> Lease | None:
        """The lease as stored (possibly lapsed), or None if never taken."""


__all__ = ["Journal", "Lease", "Record", "Snapshot"]
