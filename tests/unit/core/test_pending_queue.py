"""A group's pending queue: acceptance order, retries in their place, stale entries skipped."""

from __future__ import annotations

from mawex.core import decide
from mawex.core.state import BACKLOG_COMPACT, Key, PendingQueue, TaskRecord
from mawex.model import TaskStatus
from tests.unit.core.helpers import Harness


def _record(seq: int, id: str | None = None) -> TaskRecord:
    return TaskRecord("g", id or f"t{seq}", b"null", 1, None, None, seq, float(seq))


def _drain(queue: PendingQueue, tasks: dict[Key, TaskRecord]) -> list[int]:
    """Serve the queue to the end, as dispatch does (the head becomes running)."""
    served = []
    while (head := queue.head("g", tasks)) is not None:
        served.append(head.seq)
        head.status = TaskStatus.RUNNING
    return served


def _queue(records: list[TaskRecord]) -> tuple[PendingQueue, dict[Key, TaskRecord]]:
    queue, tasks = PendingQueue(), {}
    for record in records:
        tasks[record.key] = record
        queue.push(record)
    return queue, tasks


def test_tasks_are_served_in_acceptance_order() -> None:
    queue, tasks = _queue([_record(seq) for seq in (1, 2, 3, 4)])
    assert _drain(queue, tasks) == [1, 2, 3, 4]


def test_a_retry_keeps_its_place_ahead_of_newer_tasks() -> None:
    queue, tasks = _queue([_record(seq) for seq in (1, 2, 3)])
    one = tasks[("g", "t1")]
    one.status = TaskStatus.RUNNING
    assert queue.head("g", tasks) is tasks[("g", "t2")]
    tasks[("g", "t2")].status = TaskStatus.RUNNING
    one.status = TaskStatus.PENDING
    queue.push(one)
    later = _record(9)
    tasks[later.key] = later
    queue.push(later)
    assert _drain(queue, tasks) == [1, 3, 9]


def test_entries_no_longer_pending_are_skipped() -> None:
    queue, tasks = _queue([_record(seq) for seq in (1, 2, 3, 4)])
    tasks[("g", "t1")].status = TaskStatus.CANCELLED
    del tasks[("g", "t2")]  # purged
    replaced = _record(7, "t3")  # t3 purged and submitted again: a new record, a new seq
    tasks[replaced.key] = replaced
    queue.push(replaced)
    assert _drain(queue, tasks) == [4, 7]


def test_a_long_queue_is_compacted_as_it_is_served() -> None:
    count = 3 * BACKLOG_COMPACT
    queue, tasks = _queue([_record(seq) for seq in range(count)])
    served = []
    for _ in range(2 * BACKLOG_COMPACT + 1):
        head = queue.head("g", tasks)
        assert head is not None
        served.append(head.seq)
        head.status = TaskStatus.RUNNING
    assert len(queue.backlog) < count, "the served front was dropped"
    served += _drain(queue, tasks)
    assert served == list(range(count))


def test_a_queue_left_with_no_pending_task_holds_no_record() -> None:
    h = Harness()
    for i in range(5):
        h.submit("idle", f"t{i}")  # a group no worker serves
    queue = h.state.queues["idle"]
    assert len(queue.backlog) == 5
    for i in range(4):
        decide.cancel(h.state, "idle", f"t{i}", h.now)
    assert len(queue.backlog) == 5, "stale entries wait for the head"
    decide.cancel(h.state, "idle", "t4", h.now)
    assert queue.backlog == [] and queue.heap == []
    h.submit("idle", "again")
    again = queue.head("idle", h.state.tasks)
    assert again is not None and again.id == "again"
