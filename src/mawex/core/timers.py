"""What is due at ``now``: lost workers, overdue attempts, expired tasks, retention."""

from __future__ import annotations

import heapq

from mawex.core import events as ev
from mawex.core.decide import Limits, end_slot, fail_attempt, lose_worker
from mawex.core.state import MasterState
from mawex.model import TaskStatus
from mawex.wire import worker as wire

PURGE_CHUNK = 1000


def tick(state: MasterState, now: float, limits: Limits) -> None:
    """Emit every event that is due at ``now``."""
    _check_workers(state, now, limits)
    _check_orphans(state, now, limits)
    _check_timeouts(state, now, limits)
    _check_expiries(state, now)
    _check_retention(state, now, limits)


def _check_workers(state: MasterState, now: float, limits: Limits) -> None:
    for worker in list(state.workers.values()):
        if worker.connected and now - worker.last_seen > limits.worker_timeout_s:
            state.disconnect_worker(worker, now)
        if not worker.connected:
            since = worker.disconnected_at if worker.disconnected_at is not None else now
            if now - since >= limits.worker_grace_s:
                lose_worker(state, worker, f"worker {worker.id} lost (no heartbeat)", now)


def _check_orphans(state: MasterState, now: float, limits: Limits) -> None:
    """Attempts recorded as running whose worker never checked in to this master."""
    if now - state.leader_since < limits.worker_grace_s:
        return
    for pod, slot in list(state.occupancy.items()):
        if slot.worker in state.workers:
            continue
        end_slot(
            state,
            pod,
            slot,
            now,
            error=f"worker {slot.worker} lost (did not return after failover)",
        )


def _check_timeouts(state: MasterState, now: float, limits: Limits) -> None:
    """Backstop for attempts whose worker did not report their timeout itself."""
    for slot in list(state.occupancy.values()):
        record = state.tasks.get((slot.group, slot.id))
        if (
            record is None
            or record.status is not TaskStatus.RUNNING
            or record.attempt != slot.attempt
            or record.timeout_s is None
            or record.started_at is None
        ):
            continue
        if now >= record.started_at + record.timeout_s + limits.timeout_grace_s:
            fail_attempt(
                state, record, f"timed out after {record.timeout_s:g}s", now, release=False
            )
            state.send(
                slot.worker,
                wire.Cancel(group=slot.group, id=slot.id, attempt=slot.attempt, reason="timeout"),
            )


def _check_expiries(state: MasterState, now: float) -> None:
    heap = state.expiries
    while heap and heap[0][0] <= now:
        _, seq, group, id = heapq.heappop(heap)
        record = state.tasks.get((group, id))
        if record is not None and record.seq == seq and record.status is TaskStatus.PENDING:
            state.emit(ev.Expired(group=group, id=id, attempt=record.attempt, at=now))


def _check_retention(state: MasterState, now: float, limits: Limits) -> None:
    finished = state.finished
    keys: list[tuple[str, str]] = []
    cutoff = now - limits.retain_seconds if limits.retain_seconds is not None else None
    index = 0
    while index < len(finished) and len(keys) < PURGE_CHUNK:
        at, group, id = finished[index]
        over_count = len(finished) - index > limits.retain_results
        too_old = cutoff is not None and at < cutoff
        if not (over_count or too_old):
            break
        record = state.tasks.get((group, id))
        if record is not None and record.status.terminal and record.finished_at == at:
            keys.append((group, id))
        index += 1
    if keys:
        state.emit(ev.Purged(keys=keys, at=now))
    # drop entries of tasks already purged or finished again since
    while finished:
        at, group, id = finished[0]
        record = state.tasks.get((group, id))
        if record is not None and record.finished_at == at:
            break
        finished.popleft()
