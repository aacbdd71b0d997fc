"""The SQLite journal's background checkpointer (``synchronous=normal`` only)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from mawex.journal.base import Record
from mawex.journal.sqlite import CHECKPOINT_APPENDS, SQLiteJournal, Synchronous

#: Appends that stay well below the 1,000 pages at which SQLite's writer checkpoints
#: by itself (a one-record append writes about three pages).
APPENDS = 4 * CHECKPOINT_APPENDS
BODY = b'{"type":"accepted","id":"t","group":"g","payload":"' + b"x" * 300 + b'"}'


async def _append_all(journal: SQLiteJournal) -> int:
    lease = await journal.acquire("m", 30.0, None)
    assert lease is not None
    for offset in range(1, APPENDS + 1):
        await journal.append([Record(offset, None, 1.0, BODY)], lease.epoch)
    return lease.epoch


def _size(path: Path) -> int:
    return path.stat().st_size


#: How much the database file itself grows once most appends were copied into it.
GROWN = APPENDS * len(BODY) // 2


async def _database_growth(db: Path, synchronous: Synchronous, *, until: int | None) -> int:
    """Bytes the database file itself grew by after the appends: as soon as it grew by
    ``until`` (waiting up to 10 s), or 0.3 s after them with ``until=None``."""
    journal = SQLiteJournal(db, synchronous=synchronous)
    await journal.open()
    try:
        before = _size(db)
        await _append_all(journal)
        deadline = time.monotonic() + (10.0 if until is not None else 0.3)
        while (until is None or _size(db) - before < until) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return _size(db) - before
    finally:
        await journal.close()


async def test_normal_appends_are_copied_into_the_database_in_the_background(
    tmp_path: Path,
) -> None:
    db = tmp_path / "j.db"
    # the records only reach the database file itself through a checkpoint
    assert await _database_growth(db, "normal", until=GROWN) >= GROWN
    reopened = SQLiteJournal(db, synchronous="normal")
    await reopened.open()
    try:
        records = await reopened.read(1, APPENDS + 10)
        assert [r.offset for r in records] == list(range(1, APPENDS + 1))
        assert all(r.body == BODY for r in records)
    finally:
        await reopened.close()


async def test_full_appends_leave_checkpoints_to_the_writer(tmp_path: Path) -> None:
    # a background checkpoint, were there one, would have run within the 0.3 s
    assert await _database_growth(tmp_path / "j.db", "full", until=None) < GROWN // 2
