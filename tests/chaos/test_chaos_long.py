"""The long chaos run (``make chaos``): skipped unless ``MAWEX_CHAOS_LONG=1``.

The same cluster and checker as :mod:`tests.chaos.test_chaos`, at scale
(``MAWEX_CHAOS_TASKS``, ``MAWEX_CHAOS_EVENTS``; ``make chaos`` uses 5,000 tasks
and 75 events, so 50 leader SIGKILL/SIGSTOP events), plus:

- random worker kills: a thread SIGKILLs a random worker (and restarts it) every
  few seconds, besides the scheduled ``kill_worker`` events;
- on PostgreSQL, a restart of the PostgreSQL server itself every
  ``MAWEX_CHAOS_PG_EVERY`` (default 5) ``kill_worker`` events, with
  ``pg_ctlcluster --skip-systemctl-redirect <version> <cluster> restart``
  (``MAWEX_CHAOS_PG_CLUSTER``, default ``15 main``). Only this module ever does that,
  and only when asked to.

Each run writes a history file (JSON lines) to ``MAWEX_CHAOS_HISTORY`` (a
directory, default ``chaos-history``): the configuration, the timeline, every
acknowledged submission, result-topic event, executor run, journal record and
kill, and the checker's summary. :func:`recheck` runs the checker again on one.
"""

from __future__ import annotations

import base64
import json
import os
import random
import shlex
import subprocess
import threading
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from mawex.journal.base import Record, Snapshot

from .checker import History, check_history
from .harness import ChaosConfig, ChaosRun, Outcome, env_int, run_budget

LONG = os.environ.get("MAWEX_CHAOS_LONG") == "1"
_SIZE = ChaosConfig()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not LONG, reason="the long chaos run: make chaos (MAWEX_CHAOS_LONG=1)"),
    pytest.mark.timeout(600 + 2 * run_budget(_SIZE.tasks, _SIZE.events)),
]

HISTORY_DIR = Path(os.environ.get("MAWEX_CHAOS_HISTORY", "chaos-history"))
PG_CLUSTER = os.environ.get("MAWEX_CHAOS_PG_CLUSTER", "15 main")
PG_EVERY = env_int("MAWEX_CHAOS_PG_EVERY", 5)


class LongChaosRun(ChaosRun):
    """:class:`ChaosRun` with random worker kills and, optionally, PostgreSQL restarts."""

    def __init__(
        self,
        workdir: Path,
        journal: str,
        *,
        restart_postgresql: bool = False,
        master_id: str = "default",
    ) -> None:
        super().__init__(workdir, journal, master_id=master_id)
        self.restart_pg = restart_postgresql
        self.lock = threading.RLock()
        self.counts: Counter[str] = Counter()
        self._random_stop = threading.Event()
        self._killer: threading.Thread | None = None
        self._killer_rng = random.Random(self.config.seed + 1)
        self.killer_errors: list[str] = []

    # -- events ----------------------------------------------------------------------

    def kill_leader(self) -> None:
        with self.lock:
            super().kill_leader()
        self.counts["leader SIGKILL"] += 1

    def stop_leader(self) -> None:
        with self.lock:
            super().stop_leader()
        self.counts["leader SIGSTOP"] += 1

    def kill_worker(self) -> None:
        with self.lock:
            super().kill_worker()
            self.counts["worker kill (scheduled)"] += 1
            if self.restart_pg and self.counts["worker kill (scheduled)"] % PG_EVERY == 0:
                self.restart_postgresql()

    def restart_postgresql(self) -> None:
        command = [
            "pg_ctlcluster",
            "--skip-systemctl-redirect",
            *shlex.split(PG_CLUSTER),
            "restart",
        ]
        self.note(f"restarting PostgreSQL: {' '.join(command)}")
        done = subprocess.run(command, capture_output=True, text=True, timeout=180)
        if done.returncode != 0:
            raise self._fail(f"PostgreSQL restart failed: {done.stdout}{done.stderr}")
        self.counts["PostgreSQL restart"] += 1
        self.note(f"PostgreSQL restarted; leader {self.wait_leader(timeout=60).name}")

    # -- random worker kills -------------------------------------------------------------

    def start(self) -> None:
        super().start()
        self._killer = threading.Thread(target=self._random_kills, name="chaos-killer", daemon=True)
        self._killer.start()

    def _random_kills(self) -> None:
        while not self._random_stop.wait(self._killer_rng.uniform(2.0, 8.0)):
            try:
                with self.lock:
                    if self._random_stop.is_set():
                        return
                    proc = self._killer_rng.choice([p for p in self.workers() if p.alive])
                    pid = proc.pid
                    self.kills[pid] = self._reap(proc)
                    self.note(f"random SIGKILL worker {proc.name} (pid {pid})")
                    groups = proc.args[proc.args.index("--group") + 1]
                    pod = proc.args[proc.args.index("--pod") + 1]
                    self._start_worker(proc.name, groups, pod)
                    self.counts["worker kill (random)"] += 1
            except Exception as e:  # reported by the test
                self.killer_errors.append(repr(e))

    def _wait_terminal(self, acked: set[tuple[str, str]], deadline: float) -> None:
        self._random_stop.set()
        if self._killer is not None:
            self._killer.join(30)
        self.note("random worker kills stopped")
        super()._wait_terminal(acked, deadline)


# -- the history file -------------------------------------------------------------------


def write_history(
    path: Path, chaos: LongChaosRun, outcome: Outcome, history: History, seconds: float
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as out:

        def line(kind: str, **fields: Any) -> None:
            out.write(json.dumps({"kind": kind, **fields}, separators=(",", ":")) + "\n")

        line("config", journal=chaos.journal_url.split("@")[-1], **asdict(chaos.config))
        for text in outcome.timeline:
            line("timeline", text=text)
        for group, id in outcome.acknowledged:
            line("acknowledged", group=group, id=id)
        for event in outcome.topic:
            line("topic", event=event)
        for run in outcome.runs:
            line("run", run=run)
        for pid, at in outcome.kills.items():
            line("kill", pid=pid, at=at)
        for record in outcome.journal:
            line("journal", offset=record.offset, topic=record.topic, at=record.at,
                 epoch=record.epoch, body=base64.b64encode(record.body).decode())  # fmt: skip
        if outcome.snapshot is not None:
            line("snapshot", offset=outcome.snapshot.offset)
        line(
            "summary",
            seconds=round(seconds, 1),
            events=dict(chaos.counts),
            acknowledged=history.acknowledged,
            outcomes=dict(history.outcomes),
            topic_events=history.topic_events,
            journal_records=history.journal_records,
            epochs=len(history.epochs),
            runs=history.runs,
            killed_runs=history.killed_runs,
            retries=history.retries,
            submitter_retries=outcome.submitter_retries,
            problems=history.problems,
            text=history.summary(),
        )


def recheck(path: Path) -> History:
    """Run the checker again on a history file."""
    topic, runs, acked, journal = [], [], [], []
    kills: dict[int, float] = {}
    snapshot: Snapshot | None = None
    for raw in path.read_text().splitlines():
        item = json.loads(raw)
        kind = item["kind"]
        if kind == "topic":
            topic.append(item["event"])
        elif kind == "run":
            runs.append(item["run"])
        elif kind == "acknowledged":
            acked.append((item["group"], item["id"]))
        elif kind == "kill":
            kills[int(item["pid"])] = item["at"]
        elif kind == "journal":
            journal.append(
                Record(
                    offset=item["offset"],
                    topic=item["topic"],
                    at=item["at"],
                    body=base64.b64decode(item["body"]),
                    epoch=item["epoch"],
                )
            )
        elif kind == "snapshot":
            snapshot = Snapshot(offset=item["offset"], body=b"")
    return check_history(
        topic=topic, journal=journal, snapshot=snapshot, runs=runs, acknowledged=acked, kills=kills
    )


# -- the runs --------------------------------------------------------------------------


def _long_run(
    tmp_path: Path,
    journal: str,
    name: str,
    *,
    restart_pg: bool = False,
    master_id: str = "default",
) -> None:
    started = time.monotonic()
    chaos = LongChaosRun(tmp_path, journal, restart_postgresql=restart_pg, master_id=master_id)
    outcome = chaos.run()
    history = outcome.check()
    seconds = time.monotonic() - started
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = HISTORY_DIR / f"chaos-{name}-{stamp}-seed{chaos.config.seed}.jsonl"
    write_history(path, chaos, outcome, history, seconds)
    print(f"\nhistory: {path}\nevents: {dict(chaos.counts)}\n{history.summary()}")
    assert not chaos.killer_errors, chaos.killer_errors
    history.assert_ok()
    assert recheck(path).problems == [], "the history file checks the same"
    config = chaos.config
    leader_events = chaos.counts["leader SIGKILL"] + chaos.counts["leader SIGSTOP"]
    assert history.acknowledged == config.tasks
    assert leader_events >= config.events * 2 // 3 - 1
    # every takeover began a new epoch (one deposed before it appended leaves no record)
    assert max(history.epochs) >= 1 + leader_events
    if restart_pg:
        assert chaos.counts["PostgreSQL restart"] >= 1


def test_long_chaos_sqlite(tmp_path: Path) -> None:
    _long_run(tmp_path, f"sqlite:///{tmp_path / 'mawex.db'}", "sqlite")


@pytest.mark.postgresql
def test_long_chaos_postgresql(tmp_path: Path, postgresql_url: str) -> None:
    _long_run(tmp_path, postgresql_url, "postgresql", restart_pg=True)


@pytest.mark.redis
def test_long_chaos_redis(tmp_path: Path, redis_url: str, redis_namespace: str) -> None:
    _long_run(tmp_path, redis_url, "redis", master_id=redis_namespace)
