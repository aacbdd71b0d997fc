"""What the end-to-end tests share: starting processes, polling with deadlines, reading
the result topic, and checking the records the ``Record`` executor writes.

Nothing here sleeps to synchronise: every wait polls a condition (a master's health,
its leader flag, connected workers, an event on the topic) until a deadline, and
fails with what it saw.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx

import mawex
from mawex.cluster import LocalCluster, Proc, free_port
from tests.polling import wait_until

T = TypeVar("T")
Key = tuple[str, str]
Event = dict[str, Any]
#: The ``make_cluster`` fixture: ``make_cluster(journal=None, name="cluster", **kw)``.
MakeCluster = Callable[..., LocalCluster]

TERMINAL = frozenset({"completed", "failed", "cancelled", "expired"})

ECHO = "mawex.examples.demo:echo"
SLEEP = "mawex.examples.demo:sleep"
SLEEP_SYNC = "mawex.examples.demo:sleep_sync"
RECORD = "mawex.examples.demo:Record"
DEMO = "mawex.examples.demo:Demo"
#: This repository: on a cluster's ``PYTHONPATH``, its workers can load executors from ``tests``.
REPO = Path(__file__).resolve().parents[2]

#: Master flags that notice a lost worker quickly: a heartbeat every 0.2 s, and a task
#: whose worker disconnected is given up after 1 s.
FAST_FAILURE = ("--heartbeat", "0.2", "--worker-grace", "1")


def key_of(item: Mapping[str, Any]) -> Key:
    return (str(item["group"]), str(item["id"]))


# -- waiting --------------------------------------------------------------------------


# -- processes -------------------------------------------------------------------------


def start_master(cluster: LocalCluster, name: str, *extra: str, port: int | None = None) -> Proc:
    """Start ``mawex master`` and wait until it answers /healthz.

    With no ``port`` a free one is picked; should another process grab it between the
    pick and the bind (other test sessions run on this machine), pick again.
    """
    for tries in range(3):
        chosen = port or free_port()
        try:
            return cluster.start_master(name, *extra, port=chosen)
        except RuntimeError as exc:
            if port is not None or tries == 2 or "address already in use" not in str(exc).lower():
                raise
    raise AssertionError("unreachable")


def start_leader(cluster: LocalCluster, name: str = "master", *extra: str) -> Proc:
    """Start one master and wait until it leads."""
    proc = start_master(cluster, name, *extra)
    leader = cluster.wait_leader(timeout=30)
    assert leader is proc, f"{leader.name} leads, not {proc.name}"
    return proc


def start_worker(
    cluster: LocalCluster,
    name: str,
    executor: str,
    *,
    groups: str,
    pod: str,
    args: Mapping[str, str] | None = None,
    drain: float = 2.0,
    extra: Sequence[str] = (),
    masters: str | None = None,
) -> Proc:
    """Start ``mawex worker`` against ``masters`` (default: every master of the cluster),
    not waiting."""
    return cluster.start_worker(
        name,
        executor,
        groups=groups,
        pod=pod,
        args=dict(args or {}),
        extra=("--drain-timeout", str(drain), *extra),
        masters=masters,
    )


#: One client for the tests' probes (``httpx.get`` loads the CA bundle on every call:
#: ~25 ms of CPU each, in loops that poll); it keeps no connection to go stale.
_PROBE = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0))


def state(url: str, token: str | None = None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = _PROBE.get(f"{url}/v1/state", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def connected_workers(url: str, pod: str | None = None) -> list[dict[str, Any]]:
    try:
        workers = state(url)["workers"]
    except (httpx.HTTPError, AssertionError):
        return []
    return [
        w for w in workers if w["status"] != "disconnected" and (pod is None or w["pod"] == pod)
    ]


def wait_pod_workers(url: str, pod: str, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
    """Wait until the master at ``url`` has ``count`` connected workers in ``pod``."""

    def ready() -> list[dict[str, Any]] | None:
        workers = connected_workers(url, pod)
        return workers if len(workers) >= count else None

    return wait_until(
        ready,
        timeout,
        f"{count} connected workers in pod {pod}",
        describe=lambda: connected_workers(url),
    )


def log_actions(proc: Proc) -> list[dict[str, Any]]:
    """The JSON log lines of a process (``--log-format json``)."""
    lines = []
    for line in proc.log().splitlines():
        if line.startswith("{"):
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return lines


# -- the result topic ---------------------------------------------------------------------


class TopicReader:
    """Reads the result topic over ``GET /v1/results`` from offset 1, asserting contiguity.

    It tries every master URL it knows, so it keeps reading across a master restart.
    """

    def __init__(self, urls: str | Sequence[str], token: str | None = None) -> None:
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(headers=headers, timeout=10)
        self.events: list[Event] = []
        self.next_offset = 1

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> TopicReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def poll(self, wait: float = 0.0) -> list[Event]:
        """Fetch what is new (long-polling up to ``wait`` s); [] if no master answered."""
        for url in self.urls:
            try:
                response = self._http.get(
                    f"{url}/v1/results",
                    params={"from": self.next_offset, "limit": 5000, "wait": f"{wait:g}"},
                    timeout=wait + 10,
                )
            except httpx.HTTPError:
                continue
            if response.status_code != 200:
                continue
            fresh: list[Event] = response.json()["events"]
            for event in fresh:
                assert event["offset"] == self.next_offset, (
                    f"topic offset {event['offset']} where {self.next_offset} was expected "
                    f"(a gap or a repeat): {event}"
                )
                self.events.append(event)
                self.next_offset += 1
            return fresh
        time.sleep(0.1)  # no master answered: it is restarting; poll again shortly
        return []

    def wait_for(
        self, predicate: Callable[[TopicReader], object], timeout: float, what: str
    ) -> None:
        """Read until ``predicate(self)`` holds; fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"timed out after {timeout:g}s waiting for {what}; topic has "
                    f"{len(self.events)} events: {dict(Counter(e['type'] for e in self.events))}"
                )
            self.poll(wait=min(1.0, max(remaining, 0.05)))

    def read_to_end(self) -> list[Event]:
        """Everything up to the current end of the topic."""
        while self.poll():
            pass
        return self.events

    def terminal(self) -> dict[Key, list[Event]]:
        found: dict[Key, list[Event]] = defaultdict(list)
        for event in self.events:
            if event["type"] in TERMINAL:
                found[key_of(event)].append(event)
        return found

    def of(self, key: Key) -> list[Event]:
        return [e for e in self.events if key_of(e) == key]

    def count(self, type_: str) -> int:
        return sum(1 for e in self.events if e["type"] == type_)

    def wait_terminal(self, keys: Iterable[Key], timeout: float) -> dict[Key, Event]:
        """Read until every task in ``keys`` has a terminal event; returns them by key."""
        wanted = set(keys)

        def done(reader: TopicReader) -> bool:
            return wanted <= reader.terminal().keys()

        try:
            self.wait_for(done, timeout, f"terminal events of {len(wanted)} tasks")
        except AssertionError as exc:
            missing = sorted(wanted - self.terminal().keys())
            raise AssertionError(f"{exc}; {len(missing)} missing, e.g. {missing[:5]}") from None
        return {k: v[0] for k, v in self.terminal().items() if k in wanted}

    def wait_event(self, key: Key, type_: str, timeout: float, attempt: int | None = None) -> Event:
        """Read until ``key`` has an event of ``type_`` (and ``attempt``); returns it."""

        def find(reader: TopicReader) -> Event | None:
            for event in reader.events:
                if (
                    key_of(event) == key
                    and event["type"] == type_
                    and (attempt is None or event["attempt"] == attempt)
                ):
                    return event
            return None

        self.wait_for(find, timeout, f"a {type_} event of {key[0]}/{key[1]}")
        found = find(self)
        assert found is not None
        return found


def check_topic(events: Sequence[Event], keys: Iterable[Key] = ()) -> dict[Key, Event]:
    """The topic's invariants; returns the terminal event of every task.

    - offsets are 1, 2, 3, ... (strictly increasing and contiguous);
    - a task has at most one terminal event and no event after it;
    - a task's attempts are scheduled in increasing order, each on a worker in a pod;
    - every task in ``keys`` has its terminal event.
    """
    offsets = [e["offset"] for e in events]
    assert offsets == list(range(1, len(events) + 1)), f"offsets are not 1..n: {offsets[:20]}…"
    terminal: dict[Key, Event] = {}
    last_attempt: dict[Key, int] = {}
    for event in events:
        key = key_of(event)
        assert key not in terminal, f"event after the terminal {terminal[key]}: {event}"
        if event["type"] == "scheduled":
            assert event.get("worker") and event.get("pod"), f"scheduled without worker: {event}"
            assert event["attempt"] > last_attempt.get(key, 0), f"attempt not increasing: {event}"
            last_attempt[key] = event["attempt"]
        if event["type"] in TERMINAL:
            terminal[key] = event
    missing = set(keys) - terminal.keys()
    assert not missing, f"{len(missing)} tasks have no terminal event, e.g. {sorted(missing)[:5]}"
    return terminal


def check_pods_from_topic(events: Sequence[Event]) -> None:
    """No attempt is scheduled on a pod while the topic shows another one running there.

    (The topic shows when a pod is taken; it does not show every release, so this is a
    necessary condition of pod exclusivity, checked in commit order.)
    """
    holder: dict[str, Key] = {}
    where: dict[Key, str] = {}
    for event in events:
        key = key_of(event)
        if event["type"] == "scheduled":
            if key in where:  # handed back and scheduled again: the old pod is free
                holder.pop(where.pop(key), None)
            pod = event["pod"]
            assert pod not in holder, f"{event} scheduled while {holder[pod]} runs in pod {pod}"
            holder[pod] = key
            where[key] = pod
        elif event["type"] in TERMINAL or event["type"] == "retrying":
            pod = where.pop(key, None)
            if pod is not None and holder.get(pod) == key:
                del holder[pod]


# -- submitting -------------------------------------------------------------------------


class CountingTransport(httpx.HTTPTransport):
    """An httpx transport that counts the requests that found no master to talk to."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return super().handle_request(request)
        except httpx.TransportError:
            self.failures += 1
            raise


class Submitter(threading.Thread):
    """Submits tasks in chunks with ``client.submit_many``; ``acked`` are the acknowledged ones."""

    def __init__(self, client: mawex.Client, tasks: Sequence[Mapping[str, Any]], chunk: int = 25):
        super().__init__(daemon=True, name="submitter")
        self.client = client
        self.tasks = list(tasks)
        self.chunk = chunk
        self.acked: list[Key] = []
        self.calling = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for i in range(0, len(self.tasks), self.chunk):
                part = self.tasks[i : i + self.chunk]
                self.calling.set()
                receipt = self.client.submit_many(part)
                assert receipt.accepted + receipt.duplicates == len(part), receipt
                self.acked.extend(key_of(t) for t in part)
        except BaseException as exc:
            self.error = exc


# -- the Record executor's file -----------------------------------------------------------


def read_records(*paths: Path) -> list[dict[str, Any]]:
    """The lines the ``Record`` executor appended (one per finished run)."""
    records = []
    for path in paths:
        if path.exists():
            records += [json.loads(line) for line in path.read_text().splitlines() if line]
    return records


def overlaps(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return bool(a["start"] < b["end"] and b["start"] < a["end"])


def assert_pod_exclusive(records: Sequence[Mapping[str, Any]]) -> None:
    """No two records of one pod overlap in time."""
    by_pod: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for record in records:
        by_pod[record["pod"]].append(record)
    for pod, runs in by_pod.items():
        runs = sorted(runs, key=lambda r: r["start"])
        for before, after in itertools.pairwise(runs):
            assert after["start"] >= before["end"], (
                f"pod {pod} ran two tasks at once: {before} and {after}"
            )


def assert_no_attempt_ran_twice(records: Sequence[Mapping[str, Any]]) -> None:
    runs = Counter((r["group"], r["id"], r["attempt"]) for r in records)
    twice = {k: n for k, n in runs.items() if n > 1}
    assert not twice, f"attempts that ran more than once: {list(twice.items())[:5]}"
