"""Compare ``throughput.py --json`` results side by side (e.g. before and after a change).

Run: ``.venv/bin/python bench/before_after.py bench/results/a.json bench/results/b.json [--all]``

Prints one row per figure and one column per file; without ``--all`` only the
headline figures.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HEADLINE = (
    "git",
    "journal",
    "client",
    "whatif",
    "log_level",
    "load_avg_1m_before",
    "throughput_e2e_tasks_per_s",
    "latency_roundtrip_p50_ms",
    "latency_roundtrip_p99_ms",
    "latency_roundtrip_mean_ms",
    "latency_submit_ack_p50_ms",
    "enqueue_single_tasks_per_s",
    "enqueue_batch_tasks_per_s",
    "e2e_cpu_master_us_per_task",
    "e2e_cpu_workers_us_per_task",
    "e2e_cpu_client_us_per_task",
    "e2e_cpu_master_utilisation",
    "e2e_journal_events_per_append",
    "e2e_journal_append_ms_mean",
    "e2e_journal_append_busy_fraction",
    "e2e_follower_polls_per_1000_tasks",
    "latency_cpu_master_us_per_task",
    "idle_cpu_master_utilisation",
    "idle_cpu_workers_utilisation",
    "e2e_lost",
    "exit_code",
)


def table(runs: list[dict[str, Any]], names: Sequence[str], show_all: bool) -> list[list[str]]:
    keys = list(HEADLINE)
    if show_all:
        for run in runs:
            keys += [k for k in run if k not in keys]
    rows = [["figure", *names]]
    for key in keys:
        if any(key in run for run in runs):
            rows.append([key, *(str(run.get(key, "")) for run in runs)])
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--all", action="store_true", help="every figure, not only the headline")
    args = parser.parse_args(argv)
    runs = [json.loads(path.read_text()) for path in args.files]
    rows = table(runs, [path.stem for path in args.files], args.all)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
