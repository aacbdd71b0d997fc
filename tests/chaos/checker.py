"""The chaos checker: what must hold after any run, however many processes were killed.

:func:`check_history` takes the whole result topic, the whole journal, the
executors' own records of their runs, the acknowledged submissions and the
times processes were killed, and returns a :class:`History` whose ``problems``
list every broken guarantee (:meth:`History.assert_ok` raises with them):

1. every acknowledged task has exactly one terminal result on the topic (and no
   task has two);
2. no pod ever ran two tasks at once, by the runs' own clocks (a run whose
   process was SIGKILLed has no end line: it ends, at the latest, when its
   process was reaped; a run without an end whose process was never killed is
   a problem of its own);
3. no ``(task, attempt)`` was scheduled twice or started twice (so never on two
   workers), and every run was scheduled, for that attempt, in that pod;
4. topic offsets are contiguous from 1, and the journal's topic records match
   the topic event for event;
5. journal offsets are contiguous (above the snapshot, below it only retained
   topic records may remain) and the writers' epochs never decrease along
   offsets: a deposed leader appended nothing once a newer epoch had begun.

:func:`read_topic`, :func:`read_journal` and :func:`read_runs` collect the inputs.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from mawex.core import events as ev
from mawex.journal import open_journal
from mawex.journal.base import Record, Snapshot

TERMINAL = frozenset({"completed", "failed", "cancelled", "expired"})
Key = tuple[str, str]
#: Slack, in seconds, for comparing run intervals written by different processes' clocks
#: (one machine, one clock: only the order of two time.time() calls matters).
CLOCK_SLACK = 0.0


# -- collecting the inputs ------------------------------------------------------------


def read_topic(
    urls: Iterable[str], *, token: str | None = None, page: int = 1000, timeout: float = 5.0
) -> list[dict[str, Any]]:
    """Every result-topic event from offset 0, read through GET /v1/results of any master."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    urls = list(urls)
    events: list[dict[str, Any]] = []
    offset = 0
    errors: list[str] = []
    with httpx.Client(timeout=timeout, headers=headers) as http:
        while True:
            body = None
            for url in urls:
                try:
                    response = http.get(f"{url}/v1/results", params={"from": offset, "limit": page})
                except httpx.HTTPError as e:
                    errors.append(f"{url}: {e!r}")
                    continue
                if response.status_code == 200:
                    body = response.json()
                    break
                errors.append(f"{url}: HTTP {response.status_code} {response.text[:200]}")
            if body is None:
                raise RuntimeError(f"no master served /v1/results from {offset}: {errors[-5:]}")
            events.extend(body["events"])
            if not body["events"] or body["next"] <= offset:
                return events
            offset = body["next"]


async def _read_journal(
    url: str, namespace: str, chunk: int
) -> tuple[list[Record], Snapshot | None]:
    journal = open_journal(url, namespace=namespace)
    await journal.open()
    try:
        records: list[Record] = []
        offset = 1
        while batch := await journal.read(offset, chunk):
            records.extend(batch)
            offset = batch[-1].offset + 1
        return records, await journal.load_snapshot()
    finally:
        await journal.close()


def read_journal(
    url: str, namespace: str = "default", *, chunk: int = 5000
) -> tuple[list[Record], Snapshot | None]:
    """Every record of the journal at ``url`` (opened directly) and its snapshot."""
    return asyncio.run(_read_journal(url, namespace, chunk))


def read_runs(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """The JSON lines the executors wrote (see :mod:`tests.chaos.recorder`)."""
    lines: list[dict[str, Any]] = []
    for path in paths:
        if path.exists():
            lines.extend(json.loads(line) for line in path.read_text().splitlines() if line)
    return lines


# -- the checks ----------------------------------------------------------------------


@dataclass
class Run:
    """One execution of one attempt, from the executor's records."""

    group: str
    id: str
    attempt: int
    pod: str
    pid: int | None
    start: float
    end: float | None
    killed_at: float | None = None

    @property
    def until(self) -> float | None:
        """When the run was over, at the latest."""
        return self.end if self.end is not None else self.killed_at


@dataclass
class History:
    """What :func:`check_history` found; ``problems`` is empty when every guarantee held."""

    acknowledged: int = 0
    topic_events: int = 0
    journal_records: int = 0
    snapshot_offset: int = 0
    epochs: list[int] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    runs: int = 0
    killed_runs: int = 0
    retries: int = 0
    problems: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def summary(self) -> str:
        return (
            f"{self.acknowledged} acknowledged, outcomes {dict(self.outcomes)}, "
            f"{self.topic_events} topic events, {self.journal_records} journal records "
            f"(snapshot at {self.snapshot_offset}), epochs {self.epochs}, {self.runs} runs "
            f"({self.killed_runs} cut by a kill), {self.retries} retries"
        )

    def assert_ok(self) -> None:
        if self.problems:
            shown = "\n  ".join(self.problems[:30])
            more = f"\n  ... and {len(self.problems) - 30} more" if len(self.problems) > 30 else ""
            raise AssertionError(
                f"{len(self.problems)} problems ({self.summary()}):\n  {shown}{more}"
            )


def check_history(
    *,
    topic: list[dict[str, Any]],
    journal: list[Record],
    snapshot: Snapshot | None,
    runs: list[dict[str, Any]],
    acknowledged: Iterable[Key],
    kills: Mapping[int, float] | None = None,
) -> History:
    """Check every guarantee (see the module docstring); never raises for a violation."""
    history = History()
    acked = set(acknowledged)
    history.acknowledged = len(acked)
    _check_topic(history, topic, acked)
    scheduled = _check_schedule(history, topic)
    _check_runs(history, runs, scheduled, kills or {})
    _check_journal(history, journal, snapshot, topic)
    return history


def _check_topic(history: History, topic: list[dict[str, Any]], acked: set[Key]) -> None:
    history.topic_events = len(topic)
    offsets = [e["offset"] for e in topic]
    if offsets != list(range(1, len(offsets) + 1)):
        gaps = [(a, b) for a, b in itertools.pairwise([0, *offsets]) if b != a + 1]
        history.problem(f"topic offsets are not contiguous from 1: jumps {gaps[:10]}")
    terminals: dict[Key, list[dict[str, Any]]] = defaultdict(list)
    for event in topic:
        if event["type"] in TERMINAL:
            terminals[(event["group"], event["id"])].append(event)
        if event["type"] == "retrying":
            history.retries += 1
    for key, events in terminals.items():
        history.outcomes[events[0]["type"]] += 1
        if len(events) > 1:
            history.problem(f"task {key} has {len(events)} terminal results: {events}")
    missing = sorted(acked - terminals.keys())
    if missing:
        history.problem(
            f"{len(missing)} acknowledged tasks have no terminal result, e.g. {missing[:10]}"
        )


def _check_schedule(
    history: History, topic: list[dict[str, Any]]
) -> dict[tuple[str, str, int], dict[str, Any]]:
    scheduled: dict[tuple[str, str, int], dict[str, Any]] = {}
    for event in topic:
        if event["type"] != "scheduled":
            continue
        ref = (event["group"], event["id"], event["attempt"])
        if ref in scheduled:
            history.problem(f"attempt {ref} was scheduled twice: {scheduled[ref]} and then {event}")
        scheduled.setdefault(ref, event)
    return scheduled


def _collect_runs(history: History, lines: list[dict[str, Any]]) -> list[Run]:
    starts: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
    ends: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
    for line in lines:
        ref = (line["group"], line["id"], line["attempt"])
        (starts if line.get("event") == "start" else ends)[ref].append(line)
    runs: list[Run] = []
    for ref in starts.keys() | ends.keys():
        started, ended = starts.get(ref, []), ends.get(ref, [])
        if len(started) > 1 or len(ended) > 1:
            history.problem(f"attempt {ref} ran more than once: starts {started}, ends {ended}")
        if not started:
            history.problem(f"attempt {ref} ended without a start line: {ended}")
            continue
        begin = started[0]
        end = ended[0] if ended else None
        runs.append(
            Run(
                group=ref[0],
                id=ref[1],
                attempt=ref[2],
                pod=begin["pod"],
                pid=begin.get("pid"),
                start=begin["start"],
                end=end["end"] if end else None,
            )
        )
    return runs


def _check_runs(
    history: History,
    lines: list[dict[str, Any]],
    scheduled: dict[tuple[str, str, int], dict[str, Any]],
    kills: Mapping[int, float],
) -> None:
    runs = _collect_runs(history, lines)
    history.runs = len(runs)
    for run in runs:
        ref = (run.group, run.id, run.attempt)
        event = scheduled.get(ref)
        if event is None:
            history.problem(f"attempt {ref} ran in pod {run.pod} but was never scheduled")
        elif event["pod"] != run.pod:
            history.problem(f"attempt {ref} was scheduled in pod {event['pod']}, ran in {run.pod}")
        if run.end is None:
            killed = kills.get(run.pid) if run.pid is not None else None
            if killed is None or killed < run.start:
                history.problem(
                    f"attempt {ref} started in pod {run.pod} (pid {run.pid}) and never ended, "
                    "but its process was not killed"
                )
                continue
            run.killed_at = killed
            history.killed_runs += 1
    by_pod: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        if run.until is not None:
            by_pod[run.pod].append(run)
    for pod, pod_runs in by_pod.items():
        pod_runs.sort(key=lambda r: r.start)
        busy_until, holder = float("-inf"), None
        for run in pod_runs:
            if holder is not None and run.start < busy_until - CLOCK_SLACK:
                first = f"{holder.group}/{holder.id}#{holder.attempt}"
                second = f"{run.group}/{run.id}#{run.attempt}"
                history.problem(
                    f"pod {pod} ran two tasks at once: {first} [{holder.start:.3f}, "
                    f"{busy_until:.3f}] and {second} from {run.start:.3f}"
                )
            until = run.until
            assert until is not None
            if until > busy_until:
                busy_until, holder = until, run


def _check_journal(
    history: History,
    records: list[Record],
    snapshot: Snapshot | None,
    topic: list[dict[str, Any]],
) -> None:
    history.journal_records = len(records)
    snap = snapshot.offset if snapshot is not None else 0
    history.snapshot_offset = snap
    offsets = [r.offset for r in records]
    if any(b <= a for a, b in itertools.pairwise(offsets)):
        history.problem("journal offsets do not increase")
    above = [o for o in offsets if o > snap]
    if above and above != list(range(snap + 1, snap + 1 + len(above))):
        history.problem(
            f"journal offsets above the snapshot ({snap}) are not contiguous: "
            f"{above[:3]}...{above[-3:]} ({len(above)} records)"
        )
    stray = [r.offset for r in records if r.offset <= snap and r.topic is None]
    if stray:
        history.problem(f"non-topic records at or below the snapshot survived trim: {stray[:10]}")
    if not records and snap == 0 and topic:
        history.problem("the journal is empty but the topic is not")
    # writers' epochs: never decreasing along offsets
    epochs = [r.epoch for r in records]
    history.epochs = sorted(set(epochs))
    for a, b in itertools.pairwise(records):
        if b.epoch < a.epoch:
            history.problem(
                f"epoch decreases along offsets: record {a.offset} has epoch {a.epoch}, "
                f"record {b.offset} has epoch {b.epoch} (a deposed leader appended)"
            )
            break
    if any(e <= 0 for e in epochs):
        history.problem("records without a writer epoch")
    # the journal's topic records are the topic
    in_journal = [r for r in records if r.topic is not None]
    by_offset = {e["offset"]: e for e in topic}
    topics = [r.topic for r in in_journal]
    if topics and topics != list(range(topics[0], topics[0] + len(topics))):
        history.problem("topic offsets in the journal are not contiguous")
    if topics and topic and topics[-1] != topic[-1]["offset"]:
        history.problem(
            f"the journal's last topic offset {topics[-1]} is not the topic's {topic[-1]['offset']}"
        )
    for record in in_journal:
        event = ev.decode(record.body)
        seen = by_offset.get(record.topic or 0)
        if (
            seen is None
            or seen["type"] != ev.type_of(event)
            or seen["id"] != getattr(event, "id", None)
        ):
            history.problem(f"journal topic record {record.topic} ({event}) differs from {seen}")
            break
