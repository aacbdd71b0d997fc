"""Summarise py-spy ``--format raw`` profiles (collapsed stacks): where the CPU goes.

Run: ``.venv/bin/python bench/profile_summary.py bench/profiles/master-sqlite.txt [--top 25]``

Prints, for each file: the samples per cost category (each sample goes to the
first category, in the order of :data:`CATEGORIES`, that matches any frame of its
stack, so e.g. JSON encoding inside a log call counts as logging), then the
functions with the most self time and the most inclusive time. With
``--tasks N`` it also converts samples into microseconds of CPU per task
(``--rate`` is py-spy's sampling rate, 250 by default in bench/throughput.py).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

_LINE = re.compile(r":\d+\)$")


def _in(*parts: str) -> Callable[[str], bool]:
    return lambda frame: any(part in frame for part in parts)


def _codec(frame: str) -> bool:
    return (
        ("mawex/core/events.py" in frame and frame.startswith(("encode", "decode", "topic_body")))
        or ("mawex/wire/worker.py" in frame and frame.startswith(("encode", "decode")))
        or "mawex/wire/api.py" in frame
        or ("mawex/server/responses.py" in frame and frame.startswith("json_response"))
    )


#: (category, predicate on a frame "function (path)"), in priority order.
CATEGORIES: list[tuple[str, Callable[[str], bool]]] = [
    ("logging (records, JSON formatter, stream write)", _in("logging/", "mawex/logs.py")),
    ("journal: SQLite (execute, commit, fsync)", _in("mawex/journal/sqlite.py", "sqlite3/")),
    ("journal: PostgreSQL (asyncpg)", _in("mawex/journal/postgresql.py", "asyncpg/")),
    ("snapshot (msgpack of the whole state, trim)", _in("save_snapshot", "snapshot (mawex")),
    ("WS permessage-deflate (zlib per frame)", _in("permessage_deflate")),
    ("JSON codec (msgspec encode/decode, API parsing)", _codec),
    ("topic (publish, read, notify)", _in("mawex/master/topic.py")),
    ("core (decide, dispatch, state, timers)", _in("mawex/core/")),
    # uvicorn's send() writes to the socket at once: its self time is mostly the syscall.
    ("uvicorn WebSocket glue (incl. socket writes)", _in("uvicorn/protocols/websockets")),
    ("websockets protocol (framing, parsing)", _in("websockets/")),
    ("uvicorn HTTP (httptools, socket writes)", _in("uvicorn/protocols/http", "httptools")),
    ("Starlette (routing, Request, Response)", _in("starlette/")),
    ("httpx/httpcore/h11 client", _in("httpx/", "httpcore/", "h11/", "anyio/")),
    ("executor thread (start, run, hand-off)", _in("threading.py", "mawex/sandbox/")),
    ("worker runner (mawex/worker)", _in("mawex/worker/")),
    ("engine loop (mawex/master/engine.py)", _in("mawex/master/engine.py")),
    ("master server glue (mawex/server)", _in("mawex/server/")),
    ("asyncio / uvloop machinery", _in("asyncio/", "uvloop/", "concurrent/futures")),
]


def read_stacks(path: Path) -> Counter[tuple[str, ...]]:
    """``frame;frame;... count`` lines → stacks (root first, line numbers dropped)."""
    stacks: Counter[tuple[str, ...]] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = tuple(_LINE.sub(")", frame) for frame in stack.split(";"))
        stacks[frames] += int(count)
    return stacks


def categorise(frames: Sequence[str]) -> str:
    for name, matches in CATEGORIES:
        if any(matches(frame) for frame in frames):
            return name
    return "other"


def summarise(
    stacks: Counter[tuple[str, ...]], top: int, per_task: Callable[[int], str]
) -> Iterable[str]:
    total = sum(stacks.values())
    if not total:
        yield "  (no samples)"
        return
    categories: Counter[str] = Counter()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, count in stacks.items():
        categories[categorise(frames)] += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    yield f"  samples: {total}{per_task(total)}"
    yield "  by category:"
    for name, count in categories.most_common():
        yield f"    {100 * count / total:5.1f}%{per_task(count)}  {name}"
    yield f"  top {top} self:"
    for frame, count in own.most_common(top):
        yield f"    {100 * count / total:5.1f}%{per_task(count)}  {frame}"
    yield f"  top {top} inclusive (mawex frames):"
    mawex = [(f, c) for f, c in inclusive.most_common() if "mawex/" in f and "cli/" not in f]
    for frame, count in mawex[:top]:
        yield f"    {100 * count / total:5.1f}%{per_task(count)}  {frame}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profiles", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument(
        "--tasks", type=int, help="tasks this process handled while sampled: show us/task"
    )
    parser.add_argument("--rate", type=float, default=250.0, help="py-spy samples per second")
    args = parser.parse_args(argv)

    def per_task(samples: int) -> str:
        if not args.tasks:
            return ""
        return f" {samples / args.rate / args.tasks * 1e6:7.1f} us/task"

    for path in args.profiles:
        print(f"== {path}")
        for line in summarise(read_stacks(path), args.top, per_task):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
