"""Commands → events: submissions, cancels and everything a worker says.

Each function reads the state, emits the events the command causes (see
:meth:`MasterState.emit`), queues messages for workers, and returns the reply for
the caller. Input has been validated by the wire layer; rules that need the state
(duplicates, full queues, stale attempts) are checked here.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from mawex.core import events as ev
from mawex.core.state import MasterState, Slot, TaskRecord, WorkerInfo
from mawex.errors import NotFound, QueueFull
from mawex.model import TaskStatus
from mawex.wire import worker as wire


@dataclass(frozen=True, slots=True)
class Limits:
    """Rules the core enforces; durations in seconds."""

    max_pending_per_group: int = 1_000_000
    heartbeat_s: float = 1.0
    worker_timeout_s: float = 5.0
    worker_grace_s: float = 5.0
    timeout_grace_s: float = 2.0
    pending_timeout_s: float | None = None
    retain_results: int = 100_000
    retain_seconds: float | None = 7 * 24 * 3600.0


@dataclass(frozen=True, slots=True)
class NewTask:
    """A validated submission."""

    group: str
    id: str
    payload: msgspec.Raw
    max_attempts: int = 1
    timeout_s: float | None = None
    pending_timeout_s: float | None = None


def submit(state: MasterState, task: NewTask, now: float, limits: Limits) -> bool:
    """Accept a task; returns whether it is a duplicate (then nothing changes)."""
    if (task.group, task.id) in state.tasks:
        return True
    if state.pending_count(task.group) >= limits.max_pending_per_group:
        raise QueueFull(
            f"group {task.group!r} has {limits.max_pending_per_group} pending tasks (the limit)"
        )
    state.emit(
        ev.Accepted(
            group=task.group,
            id=task.id,
            payload=task.payload,
            at=now,
            max_attempts=task.max_attempts,
            timeout_s=task.timeout_s,
            pending_timeout_s=task.pending_timeout_s or limits.pending_timeout_s,
        )
    )
    return False


def submit_batch(
    state: MasterState, tasks: list[NewTask], now: float, limits: Limits
) -> tuple[int, list[int]]:
    """Accept many tasks all-or-nothing on queue limits; returns the number accepted and
    the positions in ``tasks`` of the duplicates (known already, or repeated in ``tasks``)."""
    fresh: dict[tuple[str, str], NewTask] = {}
    duplicates: list[int] = []
    for index, task in enumerate(tasks):
        key = (task.group, task.id)
        if key not in state.tasks and key not in fresh:
            fresh[key] = task
        else:
            duplicates.append(index)
    adding: dict[str, int] = {}
    for group, _ in fresh:
        adding[group] = adding.get(group, 0) + 1
    for group, n in adding.items():
        if state.pending_count(group) + n > limits.max_pending_per_group:
            raise QueueFull(
                f"group {group!r} would exceed {limits.max_pending_per_group} pending tasks"
            )
    for task in fresh.values():
        submit(state, task, now, limits)
    return len(fresh), duplicates


def cancel(state: MasterState, group: str, id: str, now: float) -> TaskRecord:
    """Cancel a pending or running task; a terminal task is left as it is."""
    record = state.tasks.get((group, id))
    if record is None:
        raise NotFound(f"no task {group}/{id}")
    if record.status is TaskStatus.PENDING:
        state.emit(ev.Cancelled(group=group, id=id, attempt=record.attempt, at=now))
    elif record.status is TaskStatus.RUNNING:
        worker = record.worker
        state.emit(ev.Cancelled(group=group, id=id, attempt=record.attempt, at=now))
        if worker is not None:
            state.send(worker, wire.Cancel(group=group, id=id, attempt=record.attempt))
    return record


def fail_attempt(
    state: MasterState, record: TaskRecord, error: str, now: float, *, release: bool
) -> None:
    """End the running attempt of ``record`` with an error: retry while attempts remain."""
    if record.failures + 1 < record.max_attempts:
        state.emit(
            ev.Retrying(
                group=record.group,
                id=record.id,
                attempt=record.attempt,
                error=error,
                at=now,
                release=release,
            )
        )
    else:
        state.emit(
            ev.Failed(
                group=record.group,
                id=record.id,
                attempt=record.attempt,
                error=error,
                at=now,
                release=release,
            )
        )


def _running_attempt(
    state: MasterState, worker: str, group: str, id: str, attempt: int
) -> TaskRecord | None:
    record = state.tasks.get((group, id))
    if (
        record is not None
        and record.status is TaskStatus.RUNNING
        and record.attempt == attempt
        and record.worker == worker
    ):
        return record
    return None


def _release_stale(
    state: MasterState, w: WorkerInfo, group: str, id: str, attempt: int, now: float
) -> None:
    """The worker is done with an attempt whose outcome was already recorded."""
    slot = state.occupancy.get(w.pod)
    if slot is not None and slot.matches(w.id, group, id, attempt):
        state.emit(ev.Released(pod=w.pod, worker=w.id, group=group, id=id, attempt=attempt, at=now))
    elif w.task == (group, id, attempt):
        state.set_worker_idle(w, now)


def hello(state: MasterState, msg: wire.Hello, now: float) -> WorkerInfo:
    """A worker checks in (first time or after a reconnect); returns its session info."""
    previous = state.remove_worker(msg.worker)
    worker = WorkerInfo(
        id=msg.worker,
        group=msg.group,
        pod=msg.pod,
        sandbox=msg.sandbox,
        connected=True,
        last_seen=now,
        last_used=previous.last_used if previous else now,
        joined_at=previous.joined_at if previous else now,
    )
    state.add_worker(worker)
    slot = state.occupancy.get(msg.pod)
    running = msg.running
    ref = (running.group, running.id, running.attempt) if running is not None else None
    if (
        slot is not None
        and slot.worker == msg.worker
        and (slot.group, slot.id, slot.attempt) != ref
    ):
        # The worker holds an attempt it does not report. Worker ids are per process, so
        # this is the same process: the assignment never reached it (a master died between
        # committing it and sending it). Requeue it unfailed; its pod is free again.
        end_slot(state, msg.pod, slot, now, requeue=f"worker {msg.worker} never received it")
        slot = None
    if ref is not None:
        if slot is not None and slot.worker == msg.worker:
            # still ours: a running attempt, or a finished one whose code still runs
            state.set_worker_task(worker, ref, now)
        else:
            # not ours any more (failed over, retried elsewhere): stop it, keep the pod busy
            state.set_worker_task(worker, ref, now, zombie=True)
            state.send(msg.worker, wire.Cancel(*ref, reason="attempt is no longer yours"))
    return worker


def finished(state: MasterState, w: WorkerInfo, msg: wire.Finished, now: float) -> None:
    """A worker reports an attempt's outcome (possibly again, after a reconnect)."""
    w.last_seen = now
    record = _running_attempt(state, w.id, msg.group, msg.id, msg.attempt)
    if record is None:
        if not msg.busy:
            _release_stale(state, w, msg.group, msg.id, msg.attempt, now)
    elif msg.ok:
        state.emit(
            ev.Completed(group=msg.group, id=msg.id, attempt=msg.attempt, result=msg.result, at=now)
        )
    else:
        fail_attempt(state, record, msg.error or "failed", now, release=not msg.busy)
    state.send(w.id, wire.Ack(group=msg.group, id=msg.id, attempt=msg.attempt))


def free(state: MasterState, w: WorkerInfo, msg: wire.Free, now: float) -> None:
    """A timed-out or cancelled attempt's code returned: its pod is free."""
    w.last_seen = now
    if _running_attempt(state, w.id, msg.group, msg.id, msg.attempt) is None:
        _release_stale(state, w, msg.group, msg.id, msg.attempt, now)


def bye(state: MasterState, w: WorkerInfo, msg: wire.Bye, now: float) -> None:
    """Clean check-out: the attempt the worker holds goes back to the queue, unfailed.

    A worker says ``bye`` only once it runs nothing but the attempt it hands back
    (its earlier results come first on the same connection). An attempt assigned
    to it that it does not hand back was sent while the ``bye`` was on its way:
    the worker never started it, so it is requeued too, not failed.
    """
    slot = state.occupancy.get(w.pod)
    refs = [msg.handback] if msg.handback is not None else []
    if slot is not None and slot.worker == w.id:
        refs.append(wire.AttemptRef(group=slot.group, id=slot.id, attempt=slot.attempt))
    for ref in refs:
        record = _running_attempt(state, w.id, ref.group, ref.id, ref.attempt)
        if record is not None:
            state.emit(
                ev.Requeued(
                    group=ref.group,
                    id=ref.id,
                    attempt=ref.attempt,
                    reason=f"worker {w.id} checked out",
                    at=now,
                )
            )
    lose_worker(state, w, f"worker {w.id} checked out mid-task", now)


def lose_worker(state: MasterState, w: WorkerInfo, error: str, now: float) -> None:
    """Forget a worker; its attempt, if any, fails (retried while attempts remain)."""
    state.remove_worker(w.id)
    slot = state.occupancy.get(w.pod)
    if slot is None or slot.worker != w.id:
        return
    end_slot(state, w.pod, slot, now, error=error)


def end_slot(
    state: MasterState,
    pod: str,
    slot: Slot,
    now: float,
    *,
    error: str | None = None,
    requeue: str | None = None,
) -> None:
    """Free ``pod`` from ``slot``: a still-running attempt is requeued unfailed (with the
    ``requeue`` reason) or failed with ``error`` (retried while attempts remain); an
    attempt whose outcome is already recorded just releases the pod."""
    record = _running_attempt(state, slot.worker, slot.group, slot.id, slot.attempt)
    if record is None:
        state.emit(
            ev.Released(
                pod=pod,
                worker=slot.worker,
                group=slot.group,
                id=slot.id,
                attempt=slot.attempt,
                at=now,
            )
        )
    elif requeue is not None:
        state.emit(
            ev.Requeued(group=slot.group, id=slot.id, attempt=slot.attempt, reason=requeue, at=now)
        )
    else:
        fail_attempt(state, record, error or f"worker {slot.worker} lost", now, release=True)
