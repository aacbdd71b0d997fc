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
nothing, when a newer epoch exists, atomically with the write. ``append`` stores
that epoch with every record (``Record.epoch`` when read back), so the journal
itself shows who wrote what: epochs never decrease along offsets.

Membership: every master (leader or standby) announces itself (:meth:`Journal.announce`)
every few seconds with a time to live; :meth:`Journal.members` lists the
announcements that have not expired ("standbys seen"). Membership is advisory
(never fenced): it serves ``mawex status`` and the dashboard, not leadership.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class Record:
    """One journal entry."""

    offset: int
    topic: int | None
    at: float
    body: bytes
    #: The epoch of the leader that appended the record. A backend stores the epoch
    #: passed to :meth:`Journal.append` (this field is ignored there) and returns it here.
    epoch: int = 0


@dataclass(frozen=True, slots=True)
class Lease:
    """The leader lease as the journal holds it."""

    holder: str
    epoch: int
    expires_at: float
    url: str | None = None


#: The roles a master announces.
LEADER: Final = "leader"
STANDBY: Final = "standby"


@dataclass(frozen=True, slots=True)
class Member:
    """A master as it last announced itself.

    ``holder`` names the master process (its lease holder name), ``url`` is where
    it serves, ``role`` is :data:`LEADER` or :data:`STANDBY` as the master saw
    itself. When read back from :meth:`Journal.members`, ``seen_at`` and
    ``expires_at`` are on the store's clock (like :attr:`Lease.expires_at`) and
    ``seen_s_ago`` is how long before that call, by the same clock, the member
    last announced; :meth:`Journal.announce` ignores these three fields.
    """

    holder: str
    url: str | None
    role: str
    seen_at: float = 0.0
    expires_at: float = 0.0
    seen_s_ago: float = 0.0


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

        Each record is stored with ``epoch`` (whatever its own ``epoch`` field says).
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
        """Take the lease if it is free, lapsed or already ``holder``'s, with a new epoch.

        A backend that can prove the holder's process gone may take it before it
        lapses (SQLite: :mod:`mawex.journal.presence`; PostgreSQL: the holder's
        presence session, :mod:`mawex.journal.postgresql`; Redis: its presence
        subscription, :mod:`mawex.journal.redis`)."""

    async def renew(self, lease: Lease, ttl: float) -> Lease:
        """Extend a held lease; FencedOut if it was lost to a newer epoch."""

    async def release(self, lease: Lease) -> None:
        """Give the lease up now (clean shutdown) if still held; the epoch stays."""

    async def current_lease(self) -> Lease | None:
        """The lease as stored (possibly lapsed), or None if never taken."""

    async def announce(self, member: Member, ttl: float) -> None:
        """Record (insert or replace, by ``member.holder``) that ``member`` is alive now,
        by the store's clock, until ``ttl`` seconds from now; ``ttl <= 0`` withdraws it."""

    async def members(self) -> list[Member]:
        """The members whose announcement has not expired, ordered by holder."""


__all__ = ["LEADER", "STANDBY", "Journal", "Lease", "Member", "Record", "Snapshot"]
