"""Regression: an assignment lost in a master crash is requeued, not failed or stuck.

Seen end to end in ``test_master_sigkill_mid_run_and_restart_on_the_same_journal``
(about one run in six): a master commits "attempt 1 of t goes to worker w" and is
killed before the ``assign`` frame leaves. The restarted master replays the journal
(t running on w, w holding its pod); w reconnects, still the same process, and says in
its ``hello`` that it runs nothing, or names the previous attempt whose result it is
still waiting to have acknowledged. The master then

- failed t with "worker w restarted mid-task" although t never ran (a false failure,
  terminal with ``max_attempts`` 1), or
- kept t "running" on w for ever, w's pod busy, when the hello named another attempt.

The interleaving depends on where the kill lands, so these tests replay it
deterministically on the pure core, the way a restarted master sees it.
"""

from __future__ import annotations

import msgspec

from mawex.core import decide, dispatch, timers
from mawex.core import events as ev
from mawex.core.state import MasterState
from mawex.model import TaskStatus
from mawex.wire import worker as wire

LIMITS = decide.Limits()
NOW = 1000.0


def _hello(state: MasterState, running: wire.AttemptRef | None, now: float) -> None:
    decide.hello(state, wire.Hello(worker="w1", group="g", pod="p1", running=running), now)


def _replay(journal: list[ev.Event], now: float) -> MasterState:
    """The state a restarted master rebuilds from the journal."""
    state = MasterState()
    for event in journal:
        state.apply(ev.decode(ev.encode(event)))
    state.leader_since = now
    return state


def _turn(state: MasterState, now: float, journal: list[ev.Event]) -> list[tuple[str, object]]:
    """What the engine does after the commands of a turn: timers, dispatch, commit."""
    timers.tick(state, now, LIMITS)
    dispatch.dispatch(state, now)
    events, sends = state.take_outbox()
    journal.extend(events)
    return sends


def _submit(state: MasterState, id: str) -> None:
    decide.submit(state, decide.NewTask("g", id, msgspec.Raw(b"null")), NOW, LIMITS)


def test_a_worker_that_never_received_its_assignment_gets_it_requeued() -> None:
    journal: list[ev.Event] = []
    old = MasterState()
    _hello(old, None, NOW)
    _submit(old, "t")
    sends = _turn(old, NOW, journal)  # committed: attempt 1 of t on w1 ...
    assert [type(m).__name__ for _, m in sends] == ["Assign"]  # ... and the master dies here

    new = _replay(journal, NOW + 3)
    _hello(new, None, NOW + 3)  # w1 reconnects: it runs nothing
    sends = _turn(new, NOW + 3, journal)
    record = new.tasks[("g", "t")]
    assert record.status is not TaskStatus.FAILED, record.errors
    assert record.failures == 0 and not record.errors, "no attempt was charged"
    # w1 gets the task (again): it is the only worker
    assert [(m.id, m.attempt) for _, m in sends if isinstance(m, wire.Assign)] == [("t", 2)]


def test_an_assignment_lost_behind_an_unacked_result_does_not_stick() -> None:
    journal: list[ev.Event] = []
    old = MasterState()
    _hello(old, None, NOW)
    _submit(old, "first")
    _submit(old, "second")
    _turn(old, NOW, journal)  # first → w1
    finished = wire.Finished(group="g", id="first", attempt=1, ok=True, result=msgspec.Raw(b"1"))
    decide.finished(old, old.workers["w1"], finished, NOW + 1)
    sends = _turn(old, NOW + 1, journal)  # committed: first completed, second → w1 ...
    assert {type(m).__name__ for _, m in sends} == {"Ack", "Assign"}  # ... lost with the master

    new = _replay(journal, NOW + 3)
    # w1 never saw the ack of "first": its hello names that attempt
    _hello(new, wire.AttemptRef(group="g", id="first", attempt=1), NOW + 3)
    _turn(new, NOW + 3, journal)
    decide.finished(new, new.workers["w1"], finished, NOW + 3.1)  # re-sent after the welcome
    _turn(new, NOW + 3.1, journal)
    for second in range(1, 60):  # a minute later (heartbeats keep w1 connected)
        new.workers["w1"].last_seen = NOW + 3 + second
        sends = _turn(new, NOW + 3 + second, journal)
    record = new.tasks[("g", "second")]
    assert record.status is not TaskStatus.FAILED, record.errors
    assert record.status is not TaskStatus.RUNNING or record.attempt > 1, (
        "second is still 'running' on w1, which never received it; its pod is stuck"
    )
