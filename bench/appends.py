"""How long each journal append takes, tail included: where checkpoint stalls show.

One process appends ``--appends`` one-record batches (a typical event's size) to a
fresh SQLite journal, one after another on its event loop, as a master appends
when traffic is sequential, and prints the p50, p99, p99.9 and the longest append.
SQLite copies its WAL back into the database every 1,000 pages or so; that append
pays for it, unless something else did.

``--src DIR`` measures another checkout's ``src`` (``git worktree add``), for
alternated before/after runs::

    for i in 1 2 3; do for src in /tmp/before .; do
      python bench/appends.py --src $src --journal sqlite-normal
    done; done
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence

from _common import checkout_of, git_describe, percentile

BODY = b'{"type":"accepted","id":"t-000001","group":"g","payload":' + b'"' + b"x" * 120 + b'"}'


async def measure(journal_url: str, appends: int) -> list[float]:
    from mawex.journal import open_journal
    from mawex.journal.base import Record

    journal = open_journal(journal_url)
    await journal.open()
    try:
        lease = await journal.acquire("bench", 60.0, None)
        assert lease is not None
        seconds: list[float] = []
        clock = time.perf_counter
        for offset in range(1, appends + 1):
            started = clock()
            await journal.append([Record(offset, None, time.time(), BODY)], lease.epoch)
            seconds.append(clock() - started)
        return seconds
    finally:
        await journal.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--journal", choices=("sqlite", "sqlite-normal"), default="sqlite-normal")
    parser.add_argument("--appends", type=int, default=5000)
    parser.add_argument(
        "--src", default=None, help="another checkout (or its src/) to measure instead of this one"
    )
    args = parser.parse_args(argv)
    checkout = checkout_of(args.src)
    sys.path.insert(0, str(checkout / "src"))
    import uvloop

    with tempfile.TemporaryDirectory(prefix="mawex-appends-") as tmp:
        options = "?synchronous=normal" if args.journal == "sqlite-normal" else ""
        url = f"sqlite:///{tmp}/journal.db{options}"
        samples = uvloop.run(measure(url, args.appends))
    ms = [s * 1e3 for s in samples]
    print(
        f"git {git_describe(checkout)} journal {args.journal} appends {len(ms)}: "
        f"p50 {percentile(ms, 0.5):.3f} ms p99 {percentile(ms, 0.99):.3f} ms "
        f"p99.9 {percentile(ms, 0.999):.3f} ms max {max(ms):.3f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
