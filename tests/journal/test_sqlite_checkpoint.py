"""The SQLite journal's background checkpointer (``synchronous=normal`` only)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from mawex.journal.base import Record
from mawex.journal.sqlite import CHECKPOINT_APPENDS, SQLiteJournal

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


async def _wait_for_size(path: Path, size: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while _size(path) < size and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return _size(path)


async def test_normal_appends_are_copied_into_the_database_in_the_background(
    tmp_path: Path,
) -> None:
    db = tmp_path / "j.db"
    journal = SQLiteJournal(db, synchronous="normal")
    await journal.open()
    try:
        before = _size(db)
        await _append_all(journal)
        # the records only reach the database file itself through a checkpoint
        grown = await _wait_for_size(db, before + APPENDS * len(BODY) // 2, 10.0)
        assert grown >= before + APPENDS * len(BODY) // 2
    finally:
        await journal.close()
    reopened = SQLiteJournal(db, synchronous="normal")
    await reopened.open()
    try:
        records = await reopened.read(1, APPENDS + 10)
        assert [r.offset for r in records] == list(range(1, APPENDS + 1))
        assert all(r.body == BODY for r in records)
    finally:
        await reopened.close()


async def test_full_appends_leave_checkpoints_to_the_writer(tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    journal = SQLiteJournal(db, synchronous="full")
    await journal.open()
    try:
        before = _size(db)
        await _append_all(journal)
        await asyncio.sleep(0.3)  # a background checkpoint, if there were one, would have run
        assert _size(db) < before + APPENDS * len(BODY) // 4
    finally:
        await journal.close()
