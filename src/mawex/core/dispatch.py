"""Which pending task goes to which idle worker.

Rules, in order:

1. A worker receives only tasks of its own group.
2. A pod never runs two tasks at once: a worker whose pod is busy is not eligible.
3. Groups are served oldest-pending-first (the group whose oldest pending task
   was accepted first goes next).
4. Within a group, tasks go in acceptance order (FIFO); a retried task keeps its place.
5. Among eligible workers of a group, the least recently used one gets the task.
"""

from __future__ import annotations

from mawex.core import events as ev
from mawex.core.state import MasterState, TaskRecord, WorkerInfo
from mawex.wire import worker as wire


def _eligible(state: MasterState, group: str, taken: set[str]) -> WorkerInfo | None:
    idle = state.idle.get(group)
    if not idle:
        return None
    workers = state.workers

    def pod_free(worker_id: str) -> bool:
        pod = workers[worker_id].pod
        return pod not in taken and not state.pod_busy(pod)

    worker_id = idle.least_recently_used(pod_free)
    return None if worker_id is None else workers[worker_id]


def dispatch(state: MasterState, now: float) -> int:
    """Assign as many pending tasks as the rules allow; returns how many were assigned."""
    assigned = 0
    taken: set[str] = set()
    while True:
        choice: tuple[int, TaskRecord, WorkerInfo] | None = None
        for group, idle in state.idle.items():
            if not idle or not state.pending_count(group):
                continue
            head = state.queues[group].head(group, state.tasks)
            if head is None or (choice is not None and head.seq >= choice[0]):
                continue
            worker = _eligible(state, group, taken)
            if worker is not None:
                choice = (head.seq, head, worker)
        if choice is None:
            return assigned
        _, record, worker = choice
        attempt = record.attempt + 1
        state.emit(
            ev.Scheduled(
                group=record.group,
                id=record.id,
                attempt=attempt,
                worker=worker.id,
                pod=worker.pod,
                at=now,
            )
        )
        state.send(
            worker.id,
            wire.Assign(
                group=record.group,
                id=record.id,
                attempt=attempt,
                payload=wire.Raw(record.payload),
                timeout_s=record.timeout_s,
            ),
        )
        taken.add(worker.pod)
        assigned += 1
