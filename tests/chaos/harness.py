"""Drive a real process cluster through failures while a client submits a stream of tasks.

:class:`ChaosRun` owns a :class:`~mawex.cluster.LocalCluster` of several masters
(short lease) and workers in several pods running
:class:`tests.chaos.recorder.StartRecord`. :meth:`ChaosRun.run` starts a
:class:`Submitter` thread and, in step with its progress, performs the chaos
events: SIGKILL the leader (and restart it as a standby), SIGSTOP the leader
until another master leads, then SIGCONT it (it must step down), SIGKILL a
worker (and restart it). Then it waits until every acknowledged task is
terminal, stops the processes and collects what :func:`tests.chaos.checker.check_history`
needs. Every wait is a deadline with polling.

Sizes come from the environment: ``MAWEX_CHAOS_TASKS`` (default 1000) and
``MAWEX_CHAOS_EVENTS`` (default 6).
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

import mawex
from mawex.cluster import LocalCluster, Proc
from mawex.errors import MawexError, Rejected
from mawex.journal.base import Record, Snapshot

from .checker import TERMINAL, History, check_history, read_journal, read_runs, read_topic

REPO = Path(__file__).resolve().parents[2]
EXECUTOR = "tests.chaos.recorder:StartRecord"
EVENT_KINDS = ("kill_leader", "kill_worker", "stop_leader")
#: Seconds without new topic events, on an idle leader, after which waiting is pointless.
QUIET_S = 10.0


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def run_budget(tasks: int, events: int) -> float:
    """Seconds a run of this size may take on a busy small machine."""
    return 90.0 + 0.03 * tasks + 10.0 * events


@dataclass
class ChaosConfig:
    tasks: int = field(default_factory=lambda: env_int("MAWEX_CHAOS_TASKS", 1000))
    events: int = field(default_factory=lambda: env_int("MAWEX_CHAOS_EVENTS", 6))
    masters: int = 3
    lease_ttl: float = 1.0
    heartbeat: float = 0.2
    worker_grace: float = 2.0
    snapshot_every: int = 400
    max_attempts: int = 10
    #: pod -> the --group value of each worker process in it
    pods: dict[str, list[str]] = field(
        default_factory=lambda: {"p1": ["a,b", "a"], "p2": ["a,b", "b"], "p3": ["a,b"]}
    )
    groups: tuple[str, ...] = ("a", "b")
    task_seconds: tuple[float, ...] = (0.002, 0.01, 0.03)
    #: Upper bound of the whole run (grows with the sizes), and of each recovery.
    deadline_s: float = 0.0
    recover_s: float = 30.0
    #: SQLite: how long a paused leader may block the takeover before the test resumes it.
    sqlite_stall_s: float = 5.0
    stop_tries: int = 6
    seed: int = field(
        default_factory=lambda: env_int("MAWEX_CHAOS_SEED", 0) or random.randrange(1 << 30)
    )


class Submitter(threading.Thread):
    """Submits tasks ``t00000``... one by one, retrying each (same id) until acknowledged.

    Task ``i`` waits until ``gate()`` exceeds ``i``. Only acknowledged submissions
    count; a task whose every try failed is in ``unacknowledged``.
    """

    def __init__(
        self,
        urls: list[str],
        config: ChaosConfig,
        gate: Callable[[], int],
        rng: random.Random,
        deadline: float,
    ) -> None:
        super().__init__(name="chaos-submitter", daemon=True)
        self.urls = urls
        self.config = config
        self.gate = gate
        self.rng = rng
        self.deadline = deadline
        self.acknowledged: list[tuple[str, str]] = []
        self.unacknowledged: list[tuple[str, str]] = []
        self.duplicates = 0
        self.retries = 0
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as e:  # reported by the test
            self.failure = e

    def _run(self) -> None:
        config = self.config
        with mawex.Client(self.urls, timeout=2.0, failover_timeout=10.0) as client:
            for i in range(config.tasks):
                while i >= self.gate() and not self.stop.is_set():
                    time.sleep(0.005)
                key = (config.groups[i % len(config.groups)], f"t{i:05d}")
                payload = {"seconds": self.rng.choice(config.task_seconds), "n": i}
                while True:
                    if self.stop.is_set() or time.monotonic() > self.deadline:
                        self.unacknowledged.append(key)
                        return
                    try:
                        receipt = client.submit(
                            key[0], payload, id=key[1], max_attempts=config.max_attempts
                        )
                    except Rejected as e:
                        if getattr(e, "status", None) == 429:
                            time.sleep(0.05)
                            continue
                        raise
                    except (MawexError, httpx.HTTPError) as e:
                        self.retries += 1
                        self.errors.append(f"{key[1]}: {type(e).__name__}: {e}"[:300])
                        time.sleep(0.02)
                        continue
                    self.duplicates += receipt.duplicate
                    self.acknowledged.append(key)
                    break


@dataclass
class Outcome:
    """What a chaos run leaves for the checker."""

    topic: list[dict[str, Any]]
    journal: list[Record]
    snapshot: Snapshot | None
    runs: list[dict[str, Any]]
    acknowledged: list[tuple[str, str]]
    kills: dict[int, float]
    timeline: list[str]
    submitter_retries: int
    takeovers: int

    def check(self) -> History:
        return check_history(
            topic=self.topic,
            journal=self.journal,
            snapshot=self.snapshot,
            runs=self.runs,
            acknowledged=self.acknowledged,
            kills=self.kills,
        )


class ChaosRun:
    """One chaos run against ``journal`` (see the module docstring)."""

    def __init__(
        self,
        workdir: Path,
        journal: str,
        config: ChaosConfig | None = None,
        *,
        master_id: str = "default",
    ) -> None:
        self.config = config or ChaosConfig()
        if not self.config.deadline_s:
            self.config.deadline_s = run_budget(self.config.tasks, self.config.events)
        self.workdir = workdir
        self.journal_url = journal
        self.master_id = master_id
        self.rng = random.Random(self.config.seed)
        self.cluster = LocalCluster(
            workdir,
            journal=journal,
            env={
                "PYTHONPATH": os.pathsep.join(
                    filter(None, [str(REPO), os.environ.get("PYTHONPATH")])
                )
            },
        )
        self.runs_path = workdir / "runs.jsonl"
        self.stopped: set[str] = set()
        self.kills: dict[int, float] = {}
        self.timeline: list[str] = []
        self.events_done = 0
        self.takeovers = 0
        self.started = time.monotonic()
        self._http = httpx.Client(timeout=1.0)

    # -- bookkeeping ---------------------------------------------------------------------

    def note(self, text: str) -> None:
        self.timeline.append(f"{time.monotonic() - self.started:7.2f}s {text}")

    def _deadline(self, seconds: float) -> float:
        return time.monotonic() + seconds

    def _fail(self, what: str) -> AssertionError:
        logs = "\n".join(
            f"--- {p.name} (pid {p.pid})\n{p.log()[-2500:]}"
            for p in self.cluster.procs.values()
            if p.args[0] == "master"
        )
        timeline = "\n".join(self.timeline)
        return AssertionError(f"{what}\ntimeline:\n{timeline}\n{logs}")

    # -- processes ----------------------------------------------------------------------

    def masters(self) -> list[Proc]:
        return [p for p in self.cluster.procs.values() if p.args[0] == "master"]

    def workers(self) -> list[Proc]:
        return [p for p in self.cluster.procs.values() if p.args[0] == "worker"]

    def state(self, proc: Proc) -> dict[str, Any] | None:
        if proc.name in self.stopped or not proc.alive:
            return None
        try:
            response = self._http.get(f"{proc.url}/v1/state")
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        body: dict[str, Any] = response.json()
        return body

    def leader(self, exclude: tuple[str, ...] = ()) -> Proc | None:
        """The master that leads with the newest epoch (a deposed one may still think it leads)."""
        best: tuple[int, Proc] | None = None
        for proc in self.masters():
            if proc.name in exclude:
                continue
            state = self.state(proc)
            if state and state.get("leader") and (best is None or state["epoch"] > best[0]):
                best = (state["epoch"], proc)
        return best[1] if best else None

    def wait_leader(self, exclude: tuple[str, ...] = (), timeout: float | None = None) -> Proc:
        leader = self.poll_leader(exclude, self.config.recover_s if timeout is None else timeout)
        if leader is None:
            raise self._fail(f"no leader (excluding {exclude}) within {self.config.recover_s}s")
        return leader

    def poll_leader(self, exclude: tuple[str, ...], timeout: float) -> Proc | None:
        deadline = self._deadline(timeout)
        while time.monotonic() < deadline:
            leader = self.leader(exclude)
            if leader is not None:
                return leader
            time.sleep(0.05)
        return None

    def start(self) -> None:
        config = self.config
        extra = (
            "--lease-ttl", str(config.lease_ttl),
            "--heartbeat", str(config.heartbeat),
            "--worker-grace", str(config.worker_grace),
            "--snapshot-every", str(config.snapshot_every),
            "--master-id", self.master_id,
        )  # fmt: skip
        self._master_args = extra
        for i in range(config.masters):
            self.cluster.start_master(f"m{i}", *extra, wait=False)
        for proc in self.masters():
            self.cluster.wait_healthy(proc)
        self.note(f"leader {self.wait_leader().name}")
        count = 0
        for pod, group_lists in config.pods.items():
            for j, groups in enumerate(group_lists):
                self._start_worker(f"w-{pod}-{j}", groups, pod)
                count += len(groups.split(","))
        self.cluster.wait_workers(count, timeout=config.recover_s)
        self.note(f"{count} workers connected")

    def _start_worker(self, name: str, groups: str, pod: str) -> Proc:
        return self.cluster.start_worker(
            name,
            EXECUTOR,
            groups=groups,
            pod=pod,
            args={"path": str(self.runs_path), "pod": pod},
        )

    def _reap(self, proc: Proc) -> float:
        proc.signal(signal.SIGKILL)
        proc.popen.wait(timeout=30)
        return time.time()

    # -- the events ---------------------------------------------------------------------

    def kill_leader(self) -> None:
        leader = self.wait_leader()
        self._reap(leader)
        self.note(f"SIGKILL leader {leader.name}")
        new = self.wait_leader()
        self.takeovers += 1
        self.note(f"new leader {new.name}")
        self.cluster.start_master(leader.name, *self._master_args)
        self.note(f"restarted {leader.name} as a standby")

    def stop_leader(self) -> None:
        """SIGSTOP the leader until another master leads, then SIGCONT it: it must step down.

        On SQLite a leader paused inside an append holds the file's write lock, so
        nobody can take over until it resumes (see :mod:`mawex.journal.sqlite`). So
        the test pauses it between two appends: it resumes it at once and pauses it
        again while a probe cannot take the write lock. If that keeps failing, the
        leader stays paused (holding the lock) for ``sqlite_stall_s``, the test checks
        that the cluster goes on after it resumes, and tries again.
        """
        sqlite = self.journal_url.startswith("sqlite:")
        for _ in range(self.config.stop_tries):
            leader = self.wait_leader()
            probes = 0
            leader.signal(signal.SIGSTOP)
            while sqlite and probes < 200 and not self._sqlite_writable():
                leader.signal(signal.SIGCONT)
                time.sleep(self.rng.uniform(0, 0.02))
                leader.signal(signal.SIGSTOP)
                probes += 1
            self.stopped.add(leader.name)
            self.note(f"SIGSTOP leader {leader.name} (after {probes} resumes)")
            try:
                wait = self.config.sqlite_stall_s if sqlite else self.config.recover_s
                new = self.poll_leader((leader.name,), wait)
            finally:
                leader.signal(signal.SIGCONT)
                self.stopped.discard(leader.name)
                self.note(f"SIGCONT {leader.name}")
            if new is not None:
                self.takeovers += 1
                self.note(f"{new.name} had taken over")
                break
            if not sqlite:
                raise self._fail(f"no master took over from the paused {leader.name}")
            self.note(f"no takeover: {leader.name} was paused holding the SQLite write lock")
            self.note(f"leader {self.wait_leader().name}")
        else:
            raise self._fail(f"no takeover from a paused leader in {self.config.stop_tries} tries")
        deadline = self._deadline(self.config.recover_s)
        while time.monotonic() < deadline:
            state = self.state(leader)
            if state is not None and not state["leader"]:
                self.note(f"{leader.name} stepped down (epoch {state['epoch']})")
                return
            time.sleep(0.05)
        raise self._fail(f"{leader.name} did not step down after SIGCONT")

    def _sqlite_writable(self) -> bool:
        """Whether the SQLite journal's write lock is free (nobody is in an append)."""
        path = self.journal_url.removeprefix("sqlite:///").split("?")[0]
        conn = sqlite3.connect(path, timeout=0.05, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            return True
        except sqlite3.OperationalError:
            return False
        finally:
            conn.close()

    def _busy_workers(self) -> list[Proc]:
        """Worker processes that may be running a task now (by pod and group)."""
        leader = self.leader()
        state = self.state(leader) if leader is not None else None
        busy = {(w["pod"], w["group"]) for w in (state or {}).get("workers", []) if w.get("task")}
        return [
            p
            for p in self.workers()
            if p.alive
            and any(
                (p.args[p.args.index("--pod") + 1], g) in busy
                for g in p.args[p.args.index("--group") + 1].split(",")
            )
        ]

    def kill_worker(self) -> None:
        """SIGKILL a worker, preferably one in the middle of a task, and restart it."""
        deadline = self._deadline(2.0)
        candidates: list[Proc] = []
        while not candidates and time.monotonic() < deadline:
            candidates = self._busy_workers()
        proc = self.rng.choice(candidates or [p for p in self.workers() if p.alive])
        pid = proc.pid
        self.kills[pid] = self._reap(proc)
        self.note(f"SIGKILL worker {proc.name} (pid {pid})")
        groups = proc.args[proc.args.index("--group") + 1]
        pod = proc.args[proc.args.index("--pod") + 1]
        self._start_worker(proc.name, groups, pod)
        self.note(f"restarted worker {proc.name}")

    # -- the run ------------------------------------------------------------------------

    def _gate(self) -> int:
        """How many tasks the submitter may have sent: one more share per event done."""
        config = self.config
        if self.events_done >= config.events:
            return config.tasks
        return (self.events_done + 1) * config.tasks // (config.events + 1)

    def run(self) -> Outcome:
        config = self.config
        deadline = self._deadline(config.deadline_s)
        self.note(f"seed {config.seed}, {config.tasks} tasks, {config.events} events")
        self.start()
        urls = [p.url for p in self.masters() if p.url]
        submitter = Submitter(urls, config, self._gate, random.Random(config.seed), deadline)
        submitter.start()
        try:
            for k in range(config.events):
                # fire once half of this event's share of the stream is acknowledged
                share = config.tasks / (config.events + 1)
                while len(submitter.acknowledged) < (k + 0.5) * share:
                    if not submitter.is_alive() or time.monotonic() > deadline:
                        raise self._fail(
                            f"the submitter stalled at event {k}: {submitter.errors[-5:]}"
                        )
                    time.sleep(0.01)
                kind = EVENT_KINDS[k % len(EVENT_KINDS)]
                getattr(self, kind)()
                self.events_done += 1
            submitter.join(max(0.0, deadline - time.monotonic()))
            if submitter.is_alive():
                raise self._fail("the submitter did not finish in time")
            if submitter.failure is not None:
                raise self._fail(f"the submitter failed: {submitter.failure!r}")
            self.note(
                f"submitted: {len(submitter.acknowledged)} acknowledged, "
                f"{len(submitter.unacknowledged)} not, {submitter.retries} retries, "
                f"{submitter.duplicates} duplicates"
            )
            self._wait_terminal(set(submitter.acknowledged), deadline)
            self.note("every acknowledged task is terminal")
            for proc in self.workers():
                proc.signal(signal.SIGTERM)
            for proc in self.workers():
                try:
                    proc.popen.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self._reap(proc)
            # the leader's topic first: a standby follows the journal a poll interval late
            leader = self.leader()
            masters = [p for p in self.masters() if p.url and p.alive]
            masters.sort(key=lambda p: p is not leader)
            topic = read_topic([p.url for p in masters if p.url])
        finally:
            submitter.stop.set()
            self.cluster.stop_all()
            self._http.close()
        records, snapshot = read_journal(self.journal_url, self.master_id)
        return Outcome(
            topic=topic,
            journal=records,
            snapshot=snapshot,
            runs=read_runs([self.runs_path]),
            acknowledged=submitter.acknowledged,
            kills=self.kills,
            timeline=self.timeline,
            submitter_retries=submitter.retries,
            takeovers=self.takeovers,
        )

    def _idle(self, leader: Proc) -> bool:
        state = self.state(leader)
        groups = (state or {}).get("groups", {}).values()
        return state is not None and all(g["pending"] == 0 and g["running"] == 0 for g in groups)

    def _wait_terminal(self, acked: set[tuple[str, str]], deadline: float) -> None:
        done: set[tuple[str, str]] = set()
        offset = 0
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            leader = self.leader()
            if leader is not None:
                try:
                    response = self._http.get(
                        f"{leader.url}/v1/results", params={"from": offset, "limit": 5000}
                    )
                    body = response.json() if response.status_code == 200 else None
                except httpx.HTTPError:
                    body = None
                if body is not None:
                    for event in body["events"]:
                        if event["type"] in TERMINAL:
                            done.add((event["group"], event["id"]))
                    offset = body["next"]
                    if acked <= done:
                        return
                    if body["events"]:
                        quiet_since = time.monotonic()
                        continue
                    if time.monotonic() - quiet_since > QUIET_S and self._idle(leader):
                        # nothing left to run, yet tasks are missing: let the checker say which
                        self.note(f"idle with {len(acked - done)} acknowledged tasks not terminal")
                        return
            time.sleep(0.1)
        missing = sorted(acked - done)
        raise self._fail(f"{len(missing)} acknowledged tasks not terminal in time: {missing[:10]}")
