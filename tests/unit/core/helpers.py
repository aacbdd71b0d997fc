"""Drive the pure core the way the engine does, without IO."""

from __future__ import annotations

from typing import Any

import msgspec

from mawex.core import decide, dispatch, timers
from mawex.core import events as ev
from mawex.core.state import MasterState, WorkerInfo
from mawex.wire import worker as wire

LIMITS = decide.Limits(worker_timeout_s=5.0, worker_grace_s=5.0, timeout_grace_s=1.0)


class Harness:
    """A state plus the journal of everything it emitted and every message it sent."""

    def __init__(self, limits: decide.Limits = LIMITS) -> None:
        self.state = MasterState()
        self.limits = limits
        self.now = 1000.0
        self.journal: list[ev.Event] = []
        self.sent: list[tuple[str, Any]] = []

    def commit(self) -> list[ev.Event]:
        dispatch.dispatch(self.state, self.now)
        events, sends = self.state.take_outbox()
        self.journal.extend(events)
        self.sent.extend(sends)
        return events

    def submit(self, group: str, id: str, payload: Any = None, **options: Any) -> bool:
        task = decide.NewTask(group, id, msgspec.Raw(msgspec.json.encode(payload)), **options)
        duplicate = decide.submit(self.state, task, self.now, self.limits)
        self.commit()
        return duplicate

    def join(
        self, worker: str, group: str, pod: str, running: tuple[str, str, int] | None = None
    ) -> WorkerInfo:
        ref = wire.AttemptRef(*running) if running else None
        info = decide.hello(
            self.state, wire.Hello(worker=worker, group=group, pod=pod, running=ref), self.now
        )
        self.commit()
        return info

    def finish(self, worker: str, ok: bool = True, result: Any = None, busy: bool = False) -> None:
        w = self.state.workers[worker]
        assert w.task is not None, f"{worker} has no task"
        group, id, attempt = w.task
        msg = wire.Finished(
            group=group,
            id=id,
            attempt=attempt,
            ok=ok,
            result=msgspec.Raw(msgspec.json.encode(result)),
            error=None if ok else "boom",
            busy=busy,
        )
        decide.finished(self.state, w, msg, self.now)
        self.commit()

    def tick(self, seconds: float = 0.0) -> list[ev.Event]:
        self.now += seconds
        for w in self.state.workers.values():
            if w.connected:
                w.last_seen = self.now
        timers.tick(self.state, self.now, self.limits)
        return self.commit()

    def status(self, group: str, id: str) -> str:
        return self.state.tasks[(group, id)].status.value

    def assigned(self, worker: str) -> list[tuple[str, str, int]]:
        return [
            (m.group, m.id, m.attempt)
            for w, m in self.sent
            if w == worker and isinstance(m, wire.Assign)
        ]

    def topic(self) -> list[tuple[str, str, int]]:
        return [(ev.type_of(e), e.id, e.attempt) for e in self.journal if ev.is_topic(e)]  # type: ignore[union-attr]

    def replayed(self) -> MasterState:
        state = MasterState()
        for event in self.journal:
            state.apply(ev.decode(ev.encode(event)))
        return state


def durable(state: MasterState) -> dict[str, Any]:
    """The durable part of a state, comparable with ==."""
    return {
        "tasks": {k: r.to_row() for k, r in state.tasks.items()},
        "occupancy": {p: (s.worker, s.group, s.id, s.attempt) for p, s in state.occupancy.items()},
        "pending": {g: q.size for g, q in state.queues.items() if q.size},
        "running": {g: n for g, n in state.running.items() if n},
        "seq": state.seq,
        "topic_next": state.topic_next,
    }
