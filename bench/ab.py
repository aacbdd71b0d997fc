"""Alternate a benchmark between two checkouts, A B B A per pair, and compare the medians.

This machine's speed drifts by more than most changes move a round trip: runs of
the "before" and "after" checkouts are alternated, so a drift falls on both sides
alike, and each figure is the median of its side's runs. With ``roundtrip.py
--timeline``, every step of the round trip is compared too: a step's median is
steady to a few µs where the whole round trip's p50 moves by tens of µs.

Run::

    git worktree add /tmp/before HEAD~1
    .venv/bin/python bench/ab.py /tmp/before . --pairs 3 -- \\
        roundtrip.py --journal sqlite-normal --busy-poll 0.0005 --tasks 2000 --timeline
    .venv/bin/python bench/ab.py /tmp/before . -- appends.py --journal sqlite
    git worktree remove /tmp/before
    .venv/bin/python bench/ab.py . . --b-args "--client-busy-poll 0.002" -- roundtrip.py

The script (``roundtrip.py`` or ``appends.py``, from this checkout) gets ``--src``
for each side; every other argument after ``--`` is passed on, and ``--a-args`` /
``--b-args`` add arguments to one side only (one checkout with and without an
option). Exit code 0 when every run succeeded, 2 otherwise (its output is printed).
"""

from __future__ import annotations

import argparse
import re
import shlex
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from _common import checkout_of

HERE = Path(__file__).resolve().parent
SCRIPTS = ("roundtrip.py", "appends.py")
#: "name value" pairs of a summary line: "p50 0.712 ms", "master 735 us", ...
FIGURE = re.compile(r"\b(p50|p99\.9|p99|mean|max|master|worker|client) ([0-9.]+) (ms|us)\b")
#: A timeline row: "  master.turn   112.1   +20.5"
STEP = re.compile(r"^\s+([a-z_]+\.[a-z_]+(?:#\d+)?)\s+(-?[0-9.]+)\s+([+-][0-9.]+)$")


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    rest: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, rest = argv[:at], argv[at + 1 :]
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("a", help="the 'before' checkout (or its src/)")
    parser.add_argument("b", help="the 'after' checkout (or its src/)")
    parser.add_argument("--pairs", type=int, default=3, help="A B B A rounds")
    parser.add_argument("--a-args", default="", help="more arguments for A's runs only")
    parser.add_argument("--b-args", default="", help="more arguments for B's runs only")
    args = parser.parse_args(argv)
    if not rest or rest[0] not in SCRIPTS:
        parser.error(f"after --, name the script to run: one of {', '.join(SCRIPTS)}")
    if args.pairs < 1:
        parser.error("--pairs must be at least 1")
    return args, rest


def run_once(checkout: Path, script: list[str]) -> tuple[dict[str, float], dict[str, float]]:
    """One run: its summary figures and, with ``--timeline``, each step's median time
    from the client's request (µs)."""
    done = subprocess.run(
        [sys.executable, str(HERE / script[0]), *script[1:], "--src", str(checkout)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        sys.stdout.write(done.stdout + done.stderr)
        raise SystemExit(2)
    lines = done.stdout.splitlines()
    summary = next((line for line in lines if line.startswith("git ")), "")
    figures = {f"{name} ({unit})": float(value) for name, value, unit in FIGURE.findall(summary)}
    steps = {}
    for line in lines:
        match = STEP.match(line)
        if match:
            steps[match.group(1)] = float(match.group(2))
    print(f"  {summary}", flush=True)
    return figures, steps


def medians(runs: list[dict[str, float]]) -> dict[str, float]:
    keys = dict.fromkeys(key for run in runs for key in run)
    return {key: statistics.median(run[key] for run in runs if key in run) for key in keys}


def print_steps(a: dict[str, float], b: dict[str, float]) -> None:
    """Each step's time from the request on both sides, in B's order, and how much the
    stretch ending at it grew or shrank (its B - A, less the previous step's)."""
    print(f"\n  {'step (µs from the request)':30} {'A':>8} {'B':>8} {'stretch':>8}")
    previous = 0.0
    for key in sorted(b, key=b.__getitem__):
        if key not in a:
            print(f"  {key:30} {'-':>8} {b[key]:8.1f}")
            continue
        change = b[key] - a[key]
        print(f"  {key:30} {a[key]:8.1f} {b[key]:8.1f} {change - previous:+8.1f}")
        previous = change
    for key in a.keys() - b.keys():
        print(f"  {key:30} {a[key]:8.1f} {'-':>8}")


def main(argv: Sequence[str] | None = None) -> int:
    args, script = parse_args(argv)
    sides = {"A": checkout_of(args.a), "B": checkout_of(args.b)}
    extra = {"A": shlex.split(args.a_args), "B": shlex.split(args.b_args)}
    figures: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
    steps: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
    for pair in range(1, args.pairs + 1):
        for side in "ABBA":
            print(f"pair {pair}, {side} ({sides[side]}):", flush=True)
            run_figures, run_steps = run_once(sides[side], [*script, *extra[side]])
            figures[side].append(run_figures)
            if run_steps:
                steps[side].append(run_steps)
    labels = {side: " ".join((str(sides[side]), *extra[side])) for side in "AB"}
    print(f"\nmedians of {args.pairs * 2} runs a side: A {labels['A']}, B {labels['B']}")
    a, b = medians(figures["A"]), medians(figures["B"])
    print(f"  {'figure':12} {'A':>10} {'B':>10} {'B - A':>10}")
    for key in a:
        if key in b:
            print(f"  {key:12} {a[key]:10.3f} {b[key]:10.3f} {b[key] - a[key]:+10.3f}")
    if steps["A"] and steps["B"]:
        print_steps(medians(steps["A"]), medians(steps["B"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
