"""The result topic: recent events in memory, older ones from the journal, live fan-out."""

from __future__ import annotations

import asyncio
from collections import deque

from mawex.core import events as ev
from mawex.journal.base import Journal, Record


class Topic:
    """Serves result-topic events by topic offset and wakes subscribers on new ones."""

    def __init__(self, journal: Journal, *, memory: int = 50_000) -> None:
        self._journal = journal
        self._recent: deque[tuple[int, bytes]] = deque(maxlen=memory)
        self._changed = asyncio.Condition()
        self.next = 1
        self.subscribers = 0

    def reset(self, next_offset: int) -> None:
        """Forget cached events (after a state rebuild); the journal stays the source."""
        self._recent.clear()
        self.next = next_offset

    def publish(self, records: list[Record]) -> None:
        """Add committed records (non-topic ones are skipped) and wake waiters. Records
        already in (before ``next``, as after a reset from a rebuilt state) are skipped."""
        added = False
        for record in records:
            if record.topic is None or record.topic < self.next:
                continue
            self._recent.append((record.topic, ev.topic_record_body(record.body, record.topic)))
            self.next = record.topic + 1
            added = True
        if added and self.subscribers:  # (one that starts waiting later sees ``next`` first)
            asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def read(self, from_offset: int, limit: int) -> tuple[list[bytes], int]:
        """Event bodies with topic offset >= ``from_offset`` and the offset to read next."""
        from_offset = max(from_offset, 1)
        recent = self._recent
        if recent and from_offset >= recent[0][0]:
            start = from_offset - recent[0][0]
            items = [recent[i][1] for i in range(start, min(len(recent), start + limit))]
            return items, from_offset + len(items)
        records = await self._journal.read_topic(from_offset, limit)
        bodies = [ev.topic_record_body(r.body, r.topic) for r in records if r.topic]
        next_offset = (records[-1].topic or from_offset) + 1 if records else from_offset
        return bodies, max(next_offset, from_offset)

    async def wait(self, after: int, timeout: float) -> bool:
        """Wait until an event with offset >= ``after`` exists; False on timeout."""
        if self.next > after:
            return True
        self.subscribers += 1
        try:
            async with self._changed:
                async with asyncio.timeout(timeout):
                    await self._changed.wait_for(lambda: self.next > after)
            return True
        except TimeoutError:
            return False
        finally:
            self.subscribers -= 1
