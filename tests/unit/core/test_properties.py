"""Random interleavings of submits, check-ins, check-outs, finishes, crashes, cancels,
failovers and time never break the invariants."""

from __future__ import annotations

from collections import Counter

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from mawex.core import decide
from mawex.core import events as ev
from mawex.core.state import MasterState
from mawex.model import TaskStatus
from mawex.wire import worker as wire
from tests.unit.core.helpers import Harness, durable

GROUPS = ["a", "b"]
PODS = ["p1", "p2"]
WORKERS = [f"w{i}" for i in range(5)]


class Scheduler(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.h = Harness()
        self.next_id = 0
        self.homes: dict[str, tuple[str, str]] = {}
        # attempts each worker was ever told to run, and their terminal results
        self.terminal: Counter[tuple[str, str]] = Counter()

    @rule(group=st.sampled_from(GROUPS), attempts=st.integers(1, 3), dup=st.booleans())
    def submit(self, group: str, attempts: int, dup: bool) -> None:
        if dup and self.next_id:
            self.h.submit(group, f"t{self.next_id - 1}", max_attempts=attempts)
            return
        self.h.submit(group, f"t{self.next_id}", max_attempts=attempts)
        self.next_id += 1

    @rule(worker=st.sampled_from(WORKERS), group=st.sampled_from(GROUPS), pod=st.sampled_from(PODS))
    def check_in(self, worker: str, group: str, pod: str) -> None:
        if worker in self.h.state.workers:
            return
        group, pod = self.homes.setdefault(worker, (group, pod))
        self.h.join(worker, group, pod)

    @rule(worker=st.sampled_from(WORKERS), ok=st.booleans(), busy=st.booleans())
    def finish(self, worker: str, ok: bool, busy: bool) -> None:
        w = self.h.state.workers.get(worker)
        if w is None or w.task is None or not w.connected:
            return
        self.h.finish(worker, ok=ok, busy=busy and not ok)

    @rule(worker=st.sampled_from(WORKERS))
    def free(self, worker: str) -> None:
        w = self.h.state.workers.get(worker)
        if w is None or w.task is None:
            return
        group, id, attempt = w.task
        decide.free(self.h.state, w, wire.Free(group=group, id=id, attempt=attempt), self.h.now)
        self.h.commit()

    @rule(worker=st.sampled_from(WORKERS), handback=st.booleans())
    def check_out(self, worker: str, handback: bool) -> None:
        w = self.h.state.workers.get(worker)
        if w is None:
            return
        ref = wire.AttemptRef(*w.task) if (handback and w.task) else None
        decide.bye(self.h.state, w, wire.Bye(handback=ref), self.h.now)
        self.h.commit()

    @rule(worker=st.sampled_from(WORKERS))
    def crash(self, worker: str) -> None:
        w = self.h.state.workers.get(worker)
        if w is not None and w.connected:
            self.h.state.disconnect_worker(w, self.h.now)

    @rule(worker=st.sampled_from(WORKERS), keep=st.booleans())
    def reconnect(self, worker: str, keep: bool) -> None:
        w = self.h.state.workers.get(worker)
        if w is None or w.connected:
            return
        self.h.join(worker, w.group, w.pod, running=w.task if keep else None)

    @precondition(lambda self: self.next_id > 0)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        id = f"t{data.draw(st.integers(0, self.next_id - 1))}"
        for group in GROUPS:
            if (group, id) in self.h.state.tasks:
                decide.cancel(self.h.state, group, id, self.h.now)
                self.h.commit()

    @rule(seconds=st.sampled_from([0.5, 3.0, 10.0]))
    def tick(self, seconds: float) -> None:
        self.h.tick(seconds)

    @rule()
    def failover(self) -> None:
        """A new master replays the journal; workers reconnect reporting what they run."""
        old = self.h.state
        self.h.state = self.h.replayed()
        self.h.state.leader_since = self.h.now
        for w in list(old.workers.values()):
            if w.connected:
                self.h.join(w.id, w.group, w.pod, running=w.task)

    # -- invariants --------------------------------------------------------------------

    @invariant()
    def one_task_per_pod(self) -> None:
        running_pods = Counter(
            r.pod for r in self.h.state.tasks.values() if r.status is TaskStatus.RUNNING
        )
        assert all(n == 1 for n in running_pods.values()), running_pods
        for pod in running_pods:
            assert pod in self.h.state.occupancy
        busy_workers = Counter(w.pod for w in self.h.state.workers.values() if w.task is not None)
        assert all(n == 1 for n in busy_workers.values()), busy_workers

    @invariant()
    def one_terminal_result_per_task(self) -> None:
        terminal = Counter(
            (e.group, e.id)  # type: ignore[union-attr]
            for e in self.h.journal
            if ev.type_of(e) in ev.TERMINAL_TYPES
        )
        assert all(n == 1 for n in terminal.values()), terminal
        for (group, id), _ in terminal.items():
            assert self.h.state.tasks[(group, id)].status.terminal

    @invariant()
    def attempts_are_unique(self) -> None:
        scheduled = Counter(
            (e.group, e.id, e.attempt) for e in self.h.journal if isinstance(e, ev.Scheduled)
        )
        assert all(n == 1 for n in scheduled.values()), scheduled

    @invariant()
    def workers_only_get_their_group(self) -> None:
        for e in self.h.journal:
            if isinstance(e, ev.Scheduled):
                assert self.homes[e.worker][0] == e.group

    @invariant()
    def replay_equals_live(self) -> None:
        assert durable(self.h.replayed()) == durable(self.h.state)

    @invariant()
    def snapshot_equals_live(self) -> None:
        assert durable(MasterState.from_snapshot(self.h.state.snapshot())) == durable(self.h.state)

    @invariant()
    def counters_match_statuses(self) -> None:
        state = self.h.state
        pending = Counter(r.group for r in state.tasks.values() if r.status is TaskStatus.PENDING)
        running = Counter(r.group for r in state.tasks.values() if r.status is TaskStatus.RUNNING)
        for group in GROUPS:
            assert state.pending_count(group) == pending[group]
            assert state.running[group] == running[group]

    def teardown(self) -> None:
        """Liveness: with healthy workers in every group and pod, everything finishes."""
        h = self.h
        for i, group in enumerate(GROUPS):
            h.join(f"final-{group}", group, f"final-pod-{i}")
        for _ in range(500):
            busy = [w for w in h.state.workers.values() if w.task is not None and w.connected]
            if not busy and not any(r.status is TaskStatus.PENDING for r in h.state.tasks.values()):
                if not any(r.status is TaskStatus.RUNNING for r in h.state.tasks.values()):
                    break
            for w in busy:
                if w.zombie or (w.task and h.state.tasks[w.task[:2]].status.terminal):
                    group, id, attempt = w.task  # type: ignore[misc]
                    decide.free(h.state, w, wire.Free(group=group, id=id, attempt=attempt), h.now)
                    h.commit()
                else:
                    h.finish(w.id)
            h.tick(10.0)
        assert all(r.status.terminal for r in h.state.tasks.values()), [
            (r.key, r.status) for r in h.state.tasks.values() if not r.status.terminal
        ]
        self.one_terminal_result_per_task()


TestScheduler = Scheduler.TestCase
TestScheduler.settings = settings(
    max_examples=200,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
